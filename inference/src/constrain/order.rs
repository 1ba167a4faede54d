//! The order of `properties` keys as the schema's JSON text wrote them. serde_json's `Value`
//! sorts object keys (its `preserve_order` feature would change every `Value` of the workspace,
//! wasmtime's included), so the server reads the order from the request text separately and
//! the schema compiler emits properties in that order (what vLLM and llama.cpp do).

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON document with object keys in the order the text wrote them (scalars dropped).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OrderedJson {
    Object(Vec<(String, OrderedJson)>),
    Array(Vec<OrderedJson>),
    #[default]
    Scalar,
}

impl OrderedJson {
    /// Parses JSON text; `None` when it is not JSON.
    pub fn parse(text: &[u8]) -> Option<OrderedJson> {
        serde_json::from_slice(text).ok()
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The element `i` of an array.
    pub fn index(&self, i: usize) -> Option<&OrderedJson> {
        match self {
            OrderedJson::Array(a) => a.get(i),
            _ => None,
        }
    }
}

/// For every `properties` object of a schema, the order of its keys, by the path the schema
/// compiler names it (`#/properties/a/items/properties`, `#/$defs/X/properties`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PropertyOrder(HashMap<String, Vec<String>>);

impl PropertyOrder {
    /// Collects the orders of `schema` (rooted at `#`).
    pub fn of(schema: &OrderedJson) -> PropertyOrder {
        Self::rooted(schema, "#")
    }

    /// Adds the orders of `other` (schemas under other roots).
    pub fn extend(&mut self, other: PropertyOrder) {
        self.0.extend(other.0);
    }

    /// Collects the orders of `schema`, naming its root `root` (a tool's parameters are
    /// compiled as `tool 'NAME' parameters`).
    pub fn rooted(schema: &OrderedJson, root: &str) -> PropertyOrder {
        fn walk(v: &OrderedJson, path: &str, out: &mut HashMap<String, Vec<String>>) {
            match v {
                OrderedJson::Object(m) => {
                    for (k, child) in m {
                        let p = format!("{path}/{k}");
                        if k == "properties"
                            && let OrderedJson::Object(props) = child
                        {
                            out.insert(p.clone(), props.iter().map(|(n, _)| n.clone()).collect());
                        }
                        walk(child, &p, out);
                    }
                }
                OrderedJson::Array(a) => {
                    for (i, child) in a.iter().enumerate() {
                        walk(child, &format!("{path}/{i}"), out);
                    }
                }
                OrderedJson::Scalar => {}
            }
        }
        let mut out = HashMap::new();
        walk(schema, root, &mut out);
        PropertyOrder(out)
    }

    /// The written order of the `properties` at `path` (a compiler path; `$ref` targets are
    /// named without the leading `#`).
    pub fn get(&self, path: &str) -> Option<&[String]> {
        let key = if path.starts_with('/') {
            format!("#{path}")
        } else {
            path.to_owned()
        };
        self.0.get(&key).map(Vec::as_slice)
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_unit<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_none<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<OrderedJson, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(OrderedJson::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<OrderedJson, A::Error> {
                let mut out: Vec<(String, OrderedJson)> = Vec::new();
                while let Some(k) = a.next_key::<String>()? {
                    let v = a.next_value()?;
                    // A repeated key: serde_json keeps the last value at the first key's place.
                    match out.iter_mut().find(|(x, _)| *x == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(OrderedJson::Object(out))
            }
        }
        let _ = IgnoredAny;
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_read_as_written_at_every_depth() {
        let text = br#"{"type":"object","properties":{"reasoning":{"type":"string"},"answer":{"type":"object","properties":{"z":{},"a":{}}}},
            "$defs":{"X":{"properties":{"b":{},"a":{}}}},"anyOf":[{"properties":{"y":{},"x":{}}}]}"#;
        let o = PropertyOrder::of(&OrderedJson::parse(text).unwrap());
        assert_eq!(o.get("#/properties").unwrap(), ["reasoning", "answer"]);
        assert_eq!(o.get("#/properties/answer/properties").unwrap(), ["z", "a"]);
        assert_eq!(o.get("/$defs/X/properties").unwrap(), ["b", "a"]);
        assert_eq!(o.get("#/anyOf/0/properties").unwrap(), ["y", "x"]);
    }
}
