//! Where [`crate::model`] and [`crate::tools`] calls go: in a component, to the host's
//! `sandgraph:agent` imports; in a native test, to a scripted [`AgentHost`] the test
//! installs with [`install`].
//!
//! The scripted host is a **test seam for agent logic only** (prompt construction, schema
//! shape, parsing, error paths). It does not exist in components, and it is no stand-in for
//! the real model: end-to-end behaviour is tested by running the component in the host.

use crate::{
    AgentError,
    model::{ChatRequest, ChatResponse, ModelError},
    tools::{ToolCallError, ToolDescriptor},
};

/// What an agent asks of its host. Components use the WIT imports; native tests
/// implement this to script answers.
pub trait AgentHost {
    fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError>;
    fn list_tools(&self) -> Result<Vec<ToolDescriptor>, AgentError>;
    fn call_tool(&self, name: &str, input: &str) -> Result<String, ToolCallError>;
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
pub(crate) use crate::agent_wit::{call_tool, chat, list_tools};

#[cfg(not(all(target_arch = "wasm32", target_os = "wasi")))]
pub use native::{HostGuard, install};
#[cfg(not(all(target_arch = "wasm32", target_os = "wasi")))]
pub(crate) use native::{call_tool, chat, list_tools};

/// Native builds: the host a test installed on this thread.
#[cfg(not(all(target_arch = "wasm32", target_os = "wasi")))]
mod native {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    thread_local! {
        static HOST: RefCell<Option<Rc<dyn AgentHost>>> = const { RefCell::new(None) };
    }

    const NOT_INSTALLED: &str = "no agent host on this thread: outside a component, \
        model and tool calls need a scripted host (sandgraph_guest::host::install) in the test";

    /// Routes this thread's model and tool calls to `host` until the guard is dropped.
    /// Test seam only; see the module docs.
    pub fn install(host: impl AgentHost + 'static) -> HostGuard {
        let previous = HOST.with(|h| h.borrow_mut().replace(Rc::new(host)));
        HostGuard { previous }
    }

    /// Puts back the previously installed host (usually none) when dropped.
    pub struct HostGuard {
        previous: Option<Rc<dyn AgentHost>>,
    }

    impl Drop for HostGuard {
        fn drop(&mut self) {
            let previous = self.previous.take();
            HOST.with(|h| *h.borrow_mut() = previous);
        }
    }

    fn current() -> Option<Rc<dyn AgentHost>> {
        HOST.with(|h| h.borrow().clone())
    }

    pub(crate) fn chat(request: &ChatRequest) -> Result<ChatResponse, ModelError> {
        match current() {
            Some(host) => host.chat(request),
            None => Err(ModelError::Unavailable(NOT_INSTALLED.into())),
        }
    }

    pub(crate) fn list_tools() -> Result<Vec<ToolDescriptor>, AgentError> {
        match current() {
            Some(host) => host.list_tools(),
            None => Err(AgentError::failed(NOT_INSTALLED)),
        }
    }

    pub(crate) fn call_tool(name: &str, input: &str) -> Result<String, ToolCallError> {
        match current() {
            Some(host) => host.call_tool(name, input),
            None => Err(ToolCallError::Crashed(NOT_INSTALLED.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model, tools};

    struct Echo;

    impl AgentHost for Echo {
        fn chat(&self, request: &ChatRequest) -> Result<ChatResponse, ModelError> {
            Ok(ChatResponse::text(request.messages[0].content.clone()))
        }
        fn list_tools(&self) -> Result<Vec<ToolDescriptor>, AgentError> {
            Ok(Vec::new())
        }
        fn call_tool(&self, name: &str, input: &str) -> Result<String, ToolCallError> {
            match name {
                "echo" => Ok(input.to_owned()),
                _ => Err(ToolCallError::Denied(format!(
                    "tool `{name}` is not granted"
                ))),
            }
        }
    }

    #[test]
    fn calls_reach_the_installed_host_until_its_guard_drops() {
        let request = ChatRequest::new().user("ping");
        {
            let _guard = install(Echo);
            assert_eq!(model::chat(&request).unwrap().content, "ping");
            assert_eq!(
                tools::call_json("calc", "{}").unwrap_err(),
                ToolCallError::Denied("tool `calc` is not granted".into())
            );
            assert_eq!(tools::list().unwrap(), []);

            #[derive(serde::Serialize)]
            struct In {
                n: u32,
            }
            #[derive(serde::Deserialize, Debug, PartialEq)]
            struct Out {
                n: u32,
            }
            #[derive(serde::Deserialize, Debug)]
            struct Other {
                #[allow(dead_code)]
                m: String,
            }
            assert_eq!(
                tools::call::<_, Out>("echo", &In { n: 3 }).unwrap(),
                Out { n: 3 }
            );
            let err = tools::call::<_, Other>("echo", &In { n: 3 }).unwrap_err();
            assert!(
                matches!(&err, ToolCallError::Failed(m) if m.starts_with("tool `echo` returned output that is not a valid ")
                    && m.ends_with("missing field `m` at line 1 column 7")),
                "{err}"
            );
            assert_eq!(
                AgentError::from(err.clone()),
                AgentError::Failed(format!("tool call failed: {err}"))
            );
        }
        let err = model::chat(&request).unwrap_err();
        assert!(
            matches!(&err, ModelError::Unavailable(m) if m.starts_with("no agent host on this thread")),
            "{err}"
        );
    }
}
