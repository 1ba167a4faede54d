//! OpenAI strict-mode keywords under constrained decoding: numeric bounds (`minimum`,
//! `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`), `format` and `pattern`.
//! Hand-picked documents are accepted or refused, and a property test walks random schemas
//! with random bytes the matcher allows until each document closes, then has a reference
//! validator (jsonschema-rs, with format checking, from the pinned Python tools) check every
//! document against its schema.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};

use sandgraph_inference::constrain::{Grammar, Matcher};
use sandgraph_inference::testutil::TestRng;

fn accepts(schema: &Value, doc: &str) -> bool {
    let mut m = Matcher::new(Arc::new(Grammar::compile(schema).unwrap()));
    m.advance_all(doc.as_bytes()) && m.is_complete()
}

#[test]
fn numeric_bounds_are_enforced_digit_by_digit() {
    let i = json!({"type": "integer", "minimum": 3, "maximum": 250});
    for (doc, ok) in [
        ("3", true),
        ("250", true),
        ("100", true),
        ("2", false),
        ("251", false),
        ("-1", false),
        ("0", false),
    ] {
        assert_eq!(accepts(&i, doc), ok, "{doc}");
    }
    // "3" may not be continued: 30..39 are fine, but "300" is not.
    let mut m = Matcher::new(Arc::new(Grammar::compile(&i).unwrap()));
    assert!(m.advance_all(b"30"));
    assert!(!m.accepts(b"0"));
    let n = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1.5});
    for (doc, ok) in [
        ("0", false),
        ("0.0001", true),
        ("1.5", true),
        ("1.50001", false),
        ("-0.5", false),
        ("1e0", false),
    ] {
        assert_eq!(accepts(&n, doc), ok, "{doc}");
    }
    let m5 = json!({"type": "integer", "multipleOf": 5, "minimum": -12});
    for (doc, ok) in [("15", true), ("16", false), ("-10", true), ("-15", false)] {
        assert_eq!(accepts(&m5, doc), ok, "{doc}");
    }
    // Impossible bounds are refused when the schema is compiled, with the reason.
    let e = Grammar::compile(&json!({"type": "integer", "minimum": 1.2, "maximum": 1.8}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no integer"), "{e}");
    let cents = json!({"type": "number", "multipleOf": 0.01, "minimum": 0});
    for (doc, ok) in [("3.14", true), ("3.1", true), ("3.141", false), ("7", true)] {
        assert_eq!(accepts(&cents, doc), ok, "{doc}");
    }
}

#[test]
fn formats_and_patterns_accept_valid_strings_only() {
    let fmt = |f: &str| json!({"type": "string", "format": f});
    for (f, doc, ok) in [
        ("date", "2024-02-28", true),
        ("date", "2024-02-30", false),
        ("date-time", "2024-12-05T10:20:30Z", true),
        ("date-time", "2024-12-05 10:20:30Z", false),
        ("time", "23:59:59.5+01:00", true),
        ("email", "ada.lovelace@example.org", true),
        ("email", "ada@", false),
        ("uuid", "123e4567-e89b-12d3-a456-426614174000", true),
        ("uuid", "123e4567-e89b-12d3-a456", false),
        ("ipv4", "192.168.0.1", true),
        ("ipv4", "256.1.1.1", false),
        ("hostname", "api.example.com", true),
        ("hostname", "-bad", false),
        ("duration", "P3DT4H", true),
        ("duration", "PT", false),
        ("ipv6", "2001:db8:0:0:0:0:2:1", true),
        ("ipv6", "2001:db8::1", false),
    ] {
        assert_eq!(accepts(&fmt(f), &format!("\"{doc}\"")), ok, "{f}: {doc}");
    }
    let p = json!({"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$", "maxLength": 8});
    assert!(accepts(&p, "\"ABC-12\""));
    assert!(!accepts(&p, "\"AB-12\""));
    assert!(
        !accepts(&p, "\"ABC-12345\""),
        "maxLength counts alongside the pattern"
    );
    // minLength with a pattern: lengths are exact (the string is written in ASCII).
    let even = json!({"type": "string", "pattern": "^(ab)+$", "minLength": 3, "maxLength": 7});
    assert!(accepts(&even, "\"abab\""));
    assert!(accepts(&even, "\"ababab\""));
    assert!(!accepts(&even, "\"ab\""));
    let mut m = Matcher::new(Arc::new(Grammar::compile(&even).unwrap()));
    assert!(m.advance_all(b"\"ababab"));
    assert!(!m.accepts(b"a"), "8 characters would pass maxLength 7");
    assert_eq!(m.min_close_bytes(), 1);
    let e = Grammar::compile(
        &json!({"type": "string", "pattern": "^(ab)+$", "minLength": 3, "maxLength": 3}),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no ASCII string of 3 to 3"), "{e}");
    // Unanchored: the pattern may match anywhere in the string.
    assert!(accepts(
        &json!({"type": "string", "pattern": "[0-9]{2}"}),
        "\"ab12cd\""
    ));
    let e = Grammar::compile(&fmt("uri")).unwrap_err().to_string();
    assert!(e.contains("format 'uri' is not supported"), "{e}");
}

/// A random schema using the strict-mode keywords, nested up to `depth`.
fn schema(rng: &mut TestRng, depth: u32) -> Value {
    let pick = rng.below(if depth == 0 { 4 } else { 6 });
    match pick {
        0 => {
            let lo = rng.below(100) as i64 - 50;
            let mut s =
                json!({"type": "integer", "minimum": lo, "maximum": lo + rng.below(300) as i64});
            if rng.below(3) == 0 {
                s["multipleOf"] = json!([2, 3, 5, 7][rng.below(4)]);
            }
            if rng.below(3) == 0 {
                s["exclusiveMaximum"] = s["maximum"].take();
                s.as_object_mut().unwrap().remove("maximum");
            }
            s
        }
        1 => {
            let lo = (rng.below(2000) as f64 - 1000.0) / 100.0;
            let hi = lo + (rng.below(5000) as f64) / 100.0 + 0.01;
            let (kl, kh) = match rng.below(3) {
                0 => ("minimum", "maximum"),
                1 => ("exclusiveMinimum", "maximum"),
                _ => ("minimum", "exclusiveMaximum"),
            };
            let mut s = json!({"type": "number", kl: lo, kh: hi});
            if rng.below(3) == 0 {
                s["multipleOf"] = json!([0.01, 0.25, 0.5, 3.0][rng.below(4)]);
            }
            s
        }
        2 => {
            let f = [
                "date",
                "time",
                "date-time",
                "email",
                "uuid",
                "ipv4",
                "hostname",
            ];
            json!({"type": "string", "format": f[rng.below(f.len())]})
        }
        3 => {
            let p = [
                "^[a-z]{2,5}$",
                "[0-9]+",
                "^(foo|bar)-[0-9]{1,3}$",
                "x",
                "^[A-Z][a-z]*( [A-Z][a-z]*)?$",
            ];
            let mut s = json!({"type": "string", "pattern": p[rng.below(p.len())]});
            if rng.below(2) == 0 {
                s["maxLength"] = json!(12);
            }
            if rng.below(3) == 0 {
                s["minLength"] = json!(1 + rng.below(4));
            }
            s
        }
        4 => {
            let n = 1 + rng.below(3);
            let mut props = serde_json::Map::new();
            let mut required = Vec::new();
            for i in 0..n {
                let name = format!("p{i}");
                if rng.below(2) == 0 {
                    required.push(json!(name));
                }
                props.insert(name, schema(rng, depth - 1));
            }
            json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
        }
        _ => {
            let min = rng.below(3);
            json!({"type": "array", "items": schema(rng, depth - 1), "minItems": min, "maxItems": min + rng.below(3)})
        }
    }
}

/// A document the matcher allows, built from random allowed bytes: free for a while, then
/// always a byte that brings the close nearer, until it is complete.
fn walk(rng: &mut TestRng, g: &Arc<Grammar>) -> String {
    let mut m = Matcher::new(g.clone());
    let mut out = Vec::new();
    loop {
        if m.is_complete() && (out.len() > 40 || rng.below(4) == 0 || !m.can_continue()) {
            break;
        }
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| m.accepts(&[b])).collect();
        assert!(
            !allowed.is_empty(),
            "stuck after {:?}",
            String::from_utf8_lossy(&out)
        );
        let b = if out.len() < 40 {
            // Printable ASCII mostly, so the walk looks like text rather than UTF-8 noise.
            let ascii: Vec<u8> = allowed.iter().copied().filter(|b| b.is_ascii()).collect();
            let from = if ascii.is_empty() || rng.below(10) == 0 {
                &allowed
            } else {
                &ascii
            };
            from[rng.below(from.len())]
        } else {
            let cost = |b: u8| {
                let mut n = m.clone();
                n.advance(b);
                n.min_close_bytes()
            };
            let best = allowed.iter().map(|&b| cost(b)).min().unwrap();
            let nearer: Vec<u8> = allowed.into_iter().filter(|&b| cost(b) == best).collect();
            nearer[rng.below(nearer.len())]
        };
        assert!(m.advance(b));
        out.push(b);
        assert!(out.len() < 4000, "the walk does not close");
    }
    String::from_utf8(out).expect("the matcher only allows UTF-8")
}

fn venv_python() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.tools/venv/bin/python"
    ))
}

#[test]
fn random_documents_of_random_schemas_pass_a_reference_validator() {
    let py = venv_python();
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup.sh (it installs the reference validator)",
        py.display()
    );
    let mut rng = TestRng::new(20261206);
    let mut cases = Vec::new();
    while cases.len() < 300 {
        let s = json!({"type": "object", "properties": {"v": schema(&mut rng, 2)}, "required": ["v"], "additionalProperties": false});
        let Ok(g) = Grammar::compile(&s) else {
            continue; // e.g. bounds no value satisfies: refused by design
        };
        let g = Arc::new(g);
        for _ in 0..3 {
            cases.push(json!({"schema": s, "doc": walk(&mut rng, &g)}));
        }
    }
    let path = std::env::temp_dir().join(format!(
        "sandgraph-constrain-keywords-{}.json",
        std::process::id()
    ));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(Value::Array(cases.clone()).to_string().as_bytes()))
        .unwrap();
    let check = r#"
import json, sys
import jsonschema_rs
bad = []
for c in json.load(open(sys.argv[1])):
    doc = json.loads(c["doc"])
    v = jsonschema_rs.validator_for(c["schema"], validate_formats=True)
    errors = [e.message for e in v.iter_errors(doc)]
    if errors:
        bad.append({"schema": c["schema"], "doc": c["doc"], "errors": errors})
print(json.dumps({"checked": len(json.load(open(sys.argv[1]))), "bad": bad[:5], "n_bad": len(bad)}))
"#;
    let out = Command::new(&py)
        .args(["-c", check])
        .arg(&path)
        .output()
        .expect("running the reference validator");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checked"], cases.len());
    assert_eq!(report["n_bad"], 0, "{report:#}");
}
