//! The run console at `/ui/`: a static page, script and style sheet built into the binary (no
//! build step, no CDN, nothing fetched at run time). The page holds no data; it asks for a token,
//! keeps it in the tab's `sessionStorage`, and calls the API with it like any other client, so
//! the API's scopes decide what it may read and do.
//!
//! Every answer carries a Content-Security-Policy that allows only this origin's script and
//! style (no inline script, no `eval`), no framing, no plugins and no form posts; the script
//! builds the page with `textContent` and DOM nodes, never HTML strings, so text from the journal
//! is always text.

use http::{Method, Response, StatusCode, header};

use super::problem::Problem;
use super::sse::ApiBody;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The policy on every console answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `GET /ui/...`: `segments` is the path after `/ui`.
pub(super) fn asset(method: &Method, segments: &[&str]) -> Result<Response<ApiBody>, Problem> {
    if method != Method::GET && method != Method::HEAD {
        let mut p = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on the console; use GET"),
        );
        p.headers.push((header::ALLOW, "GET, HEAD".to_owned()));
        return Err(p);
    }
    let (body, media_type) = match segments {
        // `/ui` itself: relative asset paths need the trailing slash.
        [] => {
            return Ok(
                secured(Response::builder().status(StatusCode::PERMANENT_REDIRECT))
                    .header(header::LOCATION, "/ui/")
                    .body(ApiBody::Full(None))
                    .expect("redirects are well formed"),
            );
        }
        [""] | ["index.html"] => (INDEX, "text/html; charset=utf-8"),
        ["console.js"] => (SCRIPT, "text/javascript; charset=utf-8"),
        ["console.css"] => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return Err(Problem::not_found(
                "unknown-route",
                format!(
                    "the console has no file /ui/{}; open /ui/",
                    segments.join("/").chars().take(200).collect::<String>()
                ),
            ));
        }
    };
    let body = if method == Method::HEAD {
        ApiBody::Full(None)
    } else {
        ApiBody::full(body)
    };
    Ok(secured(Response::builder().status(StatusCode::OK))
        .header(header::CONTENT_TYPE, media_type)
        // Small and versioned with the binary: revalidate, never serve an old page.
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("console responses are well formed"))
}

fn secured(b: http::response::Builder) -> http::response::Builder {
    b.header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let lower = INDEX.to_ascii_lowercase();
        // Every <script> names a file, and there is no inline handler or style attribute.
        for (i, _) in lower.match_indices("<script") {
            let tag_end = lower[i..].find('>').map(|e| i + e).unwrap();
            assert!(lower[i..tag_end].contains("src=\"/ui/"), "inline script");
            assert!(lower[tag_end..].starts_with("></script>"), "script body");
        }
        // No `on<event>=` attribute anywhere.
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !lower[i + 3 + name.len()..].starts_with('='),
                "an inline event handler on{name}"
            );
        }
        assert!(!lower.contains("style="), "an inline style");
        assert!(!lower.contains("<style"), "an inline style sheet");
        assert!(!lower.contains("http://") && !lower.contains("https://"));
    }

    #[test]
    fn the_script_builds_no_html_from_strings() {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
        ] {
            assert!(!SCRIPT.contains(banned), "console.js uses {banned}");
        }
    }

    #[test]
    fn assets_carry_the_policy_and_unknown_ones_are_404() {
        let r = asset(&Method::GET, &["console.js"]).unwrap();
        let h = r.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let Err(missing) = asset(&Method::GET, &["..", "etc", "passwd"]) else {
            panic!("served a file outside the console")
        };
        assert_eq!(missing.status, 404);
        let Err(post) = asset(&Method::POST, &[""]) else {
            panic!("served a POST")
        };
        assert_eq!(post.status, 405);
        let bare = asset(&Method::GET, &[]).unwrap();
        assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    }
}
