//! The `#[tool]` and `#[agent]` attributes of `sandgraph-guest`.
//!
//! Each turns a plain `fn(Input) -> Result<Output, Error>` into an implementation of
//! `sandgraph_guest::Tool` (or `Agent`) and exports it as the component's world.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::quote;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, MetaNameValue, PathArguments, ReturnType,
    Token, Type, parse::Parser, punctuated::Punctuated, spanned::Spanned,
};

/// Exports a function as a Sandgraph tool.
///
/// ```ignore
/// #[sandgraph_guest::tool(name = "calc", version = "0.1.0", description = "Evaluates arithmetic.")]
/// fn invoke(input: Input) -> Result<Output, ToolError> { ... }
/// ```
///
/// `name` and `description` are required; `version` defaults to the crate's version.
/// The attribute also defines `pub struct SandgraphTool`, which implements
/// `sandgraph_guest::Tool`, so native tests can drive the full request path with
/// `sandgraph_guest::runtime::call::<SandgraphTool>(json)`.
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Exports a function as a Sandgraph agent step.
///
/// ```ignore
/// #[sandgraph_guest::agent(name = "planner", version = "0.1.0", description = "Plans tool calls.")]
/// fn step(input: Input) -> Result<Output, AgentError> { ... }
/// ```
///
/// The same rules as `#[tool]`; the attribute defines `pub struct SandgraphAgent`, which
/// implements `sandgraph_guest::Agent`, so native tests can drive the request path with
/// `sandgraph_guest::agent::step::<SandgraphAgent>(json)`.
#[proc_macro_attribute]
pub fn agent(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_kind(Kind::Agent, attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Which world the attribute exports.
#[derive(Clone, Copy)]
enum Kind {
    Tool,
    Agent,
}

impl Kind {
    /// The attribute's name, and the article-qualified noun for messages.
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Tool => ("tool", "a tool", "ToolError"),
            Kind::Agent => ("agent", "an agent", "AgentError"),
        }
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    expand_kind(Kind::Tool, attr, item)
}

fn expand_kind(
    kind: Kind,
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let (attr_name, noun, error_ty) = kind.words();
    let args = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut name = None;
    let mut version = None;
    let mut description = None;
    for arg in &args {
        let key = arg
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let value = match &arg.value {
            Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            }) => s.clone(),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!("`{key}` must be a string literal"),
                ));
            }
        };
        let slot = match key.as_str() {
            "name" => &mut name,
            "version" => &mut version,
            "description" => &mut description,
            _ => {
                return Err(syn::Error::new(
                    arg.path.span(),
                    format!(
                        "unknown {attr_name} attribute `{key}`; expected name, version or description"
                    ),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(syn::Error::new(
                arg.path.span(),
                format!("`{key}` given twice"),
            ));
        }
    }
    let name = name.ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            format!("missing `name = \"...\"` in #[{attr_name}(...)]"),
        )
    })?;
    let description = description.ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            format!("missing `description = \"...\"` in #[{attr_name}(...)]"),
        )
    })?;
    let version = match version {
        Some(v) => quote!(#v),
        None => quote!(::core::env!("CARGO_PKG_VERSION")),
    };

    let function: ItemFn = syn::parse2(item)?;
    let sig = &function.sig;
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!("{noun} function takes exactly one argument: its input type"),
        ));
    }
    let input_ty = match sig.inputs.first() {
        Some(FnArg::Typed(pat)) => (*pat.ty).clone(),
        Some(other) => {
            return Err(syn::Error::new(
                other.span(),
                format!("{noun} function cannot take `self`"),
            ));
        }
        None => unreachable_input(),
    };
    let output_ty = result_ok_type(&sig.output, noun, error_ty)?;
    let fn_name = &sig.ident;

    if let Kind::Agent = kind {
        return Ok(quote! {
            #function

            /// The agent defined by `#[sandgraph_guest::agent]` in this crate.
            pub struct SandgraphAgent;

            impl ::sandgraph_guest::Agent for SandgraphAgent {
                const NAME: &'static str = #name;
                const VERSION: &'static str = #version;
                const DESCRIPTION: &'static str = #description;
                type Input = #input_ty;
                type Output = #output_ty;
                fn step(
                    input: Self::Input,
                ) -> ::core::result::Result<Self::Output, ::sandgraph_guest::AgentError> {
                    #fn_name(input)
                }
            }

            ::sandgraph_guest::export_agent!(SandgraphAgent);
        });
    }

    Ok(quote! {
        #function

        /// The tool defined by `#[sandgraph_guest::tool]` in this crate.
        pub struct SandgraphTool;

        impl ::sandgraph_guest::Tool for SandgraphTool {
            const NAME: &'static str = #name;
            const VERSION: &'static str = #version;
            const DESCRIPTION: &'static str = #description;
            type Input = #input_ty;
            type Output = #output_ty;
            fn invoke(
                input: Self::Input,
            ) -> ::core::result::Result<Self::Output, ::sandgraph_guest::ToolError> {
                #fn_name(input)
            }
        }

        ::sandgraph_guest::export_tool!(SandgraphTool);
    })
}

/// `inputs.len() == 1` was checked, so `first()` is `Some`.
fn unreachable_input() -> Type {
    syn::parse_quote!(())
}

fn result_ok_type(output: &ReturnType, noun: &str, error_ty: &str) -> syn::Result<Type> {
    let error = || {
        syn::Error::new(
            output.span(),
            format!("{noun} function returns `Result<Output, {error_ty}>`"),
        )
    };
    let ReturnType::Type(_, ty) = output else {
        return Err(error());
    };
    let Type::Path(path) = &**ty else {
        return Err(error());
    };
    let last = path.path.segments.last().ok_or_else(error)?;
    if last.ident != "Result" {
        return Err(error());
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return Err(error());
    };
    match args.args.first() {
        Some(GenericArgument::Type(ok)) => Ok(ok.clone()),
        _ => Err(error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        expand(attr, item).unwrap_err().to_string()
    }

    #[test]
    fn expands_to_a_tool_impl_and_the_export() {
        let out = expand(
            quote!(name = "calc", description = "d"),
            quote!(
                fn invoke(input: In) -> Result<Out, ToolError> {
                    todo_()
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(
            out.contains("impl :: sandgraph_guest :: Tool for SandgraphTool"),
            "{out}"
        );
        assert!(out.contains("type Input = In"), "{out}");
        assert!(out.contains("type Output = Out"), "{out}");
        assert!(
            out.contains(":: core :: env ! (\"CARGO_PKG_VERSION\")"),
            "{out}"
        );
        assert!(
            out.contains(":: sandgraph_guest :: export_tool ! (SandgraphTool)"),
            "{out}"
        );
    }

    #[test]
    fn agent_expands_to_an_agent_impl_and_its_export() {
        let out = expand_kind(
            Kind::Agent,
            quote!(name = "planner", version = "1.0.0", description = "d"),
            quote!(
                fn step(input: In) -> Result<Out, AgentError> {
                    todo_()
                }
            ),
        )
        .unwrap()
        .to_string();
        assert!(
            out.contains("impl :: sandgraph_guest :: Agent for SandgraphAgent"),
            "{out}"
        );
        assert!(
            out.contains("const VERSION : & 'static str = \"1.0.0\""),
            "{out}"
        );
        assert!(
            out.contains(":: sandgraph_guest :: export_agent ! (SandgraphAgent)"),
            "{out}"
        );
        assert!(!out.contains("export_tool"), "{out}");
    }

    #[test]
    fn agent_errors_speak_of_agents() {
        let err = |attr, item| {
            expand_kind(Kind::Agent, attr, item)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(
                quote!(description = "d"),
                quote!(
                    fn step(i: I) -> Result<O, AgentError> {
                        x()
                    }
                )
            ),
            "missing `name = \"...\"` in #[agent(...)]"
        );
        assert_eq!(
            err(
                quote!(name = "p", description = "d", model = "m"),
                quote!(
                    fn step(i: I) -> Result<O, AgentError> {
                        x()
                    }
                )
            ),
            "unknown agent attribute `model`; expected name, version or description"
        );
        assert_eq!(
            err(
                quote!(name = "p", description = "d"),
                quote!(
                    fn step(i: I) -> O {
                        x()
                    }
                )
            ),
            "an agent function returns `Result<Output, AgentError>`"
        );
    }

    #[test]
    fn rejects_bad_attributes() {
        let item = quote!(
            fn invoke(i: In) -> Result<Out, ToolError> {
                x()
            }
        );
        assert_eq!(
            error(quote!(description = "d"), item.clone()),
            "missing `name = \"...\"` in #[tool(...)]"
        );
        assert_eq!(
            error(quote!(name = "c"), item.clone()),
            "missing `description = \"...\"` in #[tool(...)]"
        );
        assert_eq!(
            error(
                quote!(name = "c", description = "d", author = "me"),
                item.clone()
            ),
            "unknown tool attribute `author`; expected name, version or description"
        );
        assert_eq!(
            error(quote!(name = 3, description = "d"), item.clone()),
            "`name` must be a string literal"
        );
        assert_eq!(
            error(quote!(name = "a", name = "b", description = "d"), item),
            "`name` given twice"
        );
    }

    #[test]
    fn rejects_bad_signatures() {
        let attr = quote!(name = "c", description = "d");
        assert_eq!(
            error(
                attr.clone(),
                quote!(
                    fn invoke(a: A, b: B) -> Result<O, E> {
                        x()
                    }
                )
            ),
            "a tool function takes exactly one argument: its input type"
        );
        assert_eq!(
            error(
                attr.clone(),
                quote!(
                    fn invoke(a: A) -> O {
                        x()
                    }
                )
            ),
            "a tool function returns `Result<Output, ToolError>`"
        );
        assert_eq!(
            error(
                attr,
                quote!(
                    fn invoke(a: A) {
                        x()
                    }
                )
            ),
            "a tool function returns `Result<Output, ToolError>`"
        );
    }
}
