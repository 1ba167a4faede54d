//! Chat prompt rendering. Only ChatML is supported; a model's own template is used when it is
//! ChatML-shaped, including the default system prompt it inserts when none is given.

use super::TokenizerError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A recognised chat template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`.
    ChatMl {
        /// System prompt the template inserts when the conversation has none.
        default_system: Option<String>,
    },
}

impl ChatTemplate {
    /// Recognises a model's template; no template at all means plain ChatML.
    pub fn detect(template: Option<&str>) -> Result<ChatTemplate, TokenizerError> {
        let Some(t) = template else {
            return Ok(ChatTemplate::ChatMl {
                default_system: None,
            });
        };
        if !(t.contains("<|im_start|>") && t.contains("<|im_end|>")) {
            return Err(TokenizerError::UnsupportedChatTemplate);
        }
        let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"]
            .iter()
            .find_map(|head| {
                let start = t.find(head)? + head.len();
                let len = t[start..].find("<|im_end|>")?;
                let text = &t[start..start + len];
                // A literal default, not an expression that splices a message in.
                let literal = !text.contains(['{', '}', '\'', '"', '+']);
                literal.then(|| text.to_owned())
            });
        Ok(ChatTemplate::ChatMl { default_system })
    }

    /// Renders a conversation and the opening of the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let ChatTemplate::ChatMl { default_system } = self;
        let mut out = String::new();
        let push = |out: &mut String, role: &str, content: &str| {
            out.push_str("<|im_start|>");
            out.push_str(role);
            out.push('\n');
            out.push_str(content);
            out.push_str("<|im_end|>\n");
        };
        if let Some(sys) = default_system
            && messages.first().is_none_or(|m| m.role != "system")
        {
            {
                push(&mut out, "system", sys);
            }
        }
        for m in messages {
            push(&mut out, &m.role, &m.content);
        }
        out.push_str("<|im_start|>assistant\n");
        out
    }
}
