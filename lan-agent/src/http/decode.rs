//! JSON request bodies decoded the way Consul's Go decoder reads them: struct field names
//! match case-insensitively, and `snake_case` spellings match too (`lock_delay` for
//! `LockDelay`), while keys of user maps (`Meta`, `NodeMeta`) are left exactly as sent.
//!
//! serde matches field names exactly, so [`from_slice`] wraps the parsed JSON in a
//! deserializer that, whenever serde asks for a struct, renames incoming keys to the field
//! names serde expects.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use serde_json::{Map, Value};

/// Decodes a JSON body into `T`, matching field names like Consul does.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let value: Value = serde_json::from_slice(bytes)?;
    from_value(value)
}

/// Decodes an already-parsed JSON value into `T`, matching field names like Consul does.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Loose(value))
}

/// An error in the words Go's decoder would use where they differ from serde's, so
/// clients matching on Consul's text still match (`json: unknown field "Foo"`).
pub fn go_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        return format!("json: unknown field \"{name}\"");
    }
    if e.is_eof() {
        return "EOF".to_string();
    }
    text
}

/// The form two field spellings share when they should match.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn rename_keys(map: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| {
            if fields.contains(&k.as_str()) {
                return (k, v);
            }
            let folded = fold(&k);
            match fields.iter().find(|f| fold(f) == folded) {
                Some(f) => ((*f).to_string(), v),
                None => (k, v),
            }
        })
        .collect()
}

struct Loose(Value);

impl<'de> Deserializer<'de> for Loose {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(LooseSeq(items.into_iter())),
            Value::Object(map) => visitor.visit_map(LooseMap::new(map)),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Loose(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(LooseMap::new(rename_keys(map, fields))),
            other => Loose(other).deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(map) if map.len() == 1 => {
                let map = rename_keys(map, variants);
                let Some((variant, value)) = map.into_iter().next() else {
                    return Err(de::Error::custom("expected an object with one key"));
                };
                visitor.visit_enum(LooseEnum { variant, value })
            }
            other => other.deserialize_enum("", variants, visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct LooseSeq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for LooseSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Loose(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct LooseMap {
    entries: serde_json::map::IntoIter,
    pending: Option<Value>,
}

impl LooseMap {
    fn new(map: Map<String, Value>) -> Self {
        Self {
            entries: map.into_iter(),
            pending: None,
        }
    }
}

impl<'de> MapAccess<'de> for LooseMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((k, v)) => {
                self.pending = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let v = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("value requested before key"))?;
        seed.deserialize(Loose(v))
    }
}

struct LooseEnum {
    variant: String,
    value: Value,
}

impl<'de> EnumAccess<'de> for LooseEnum {
    type Error = serde_json::Error;
    type Variant = Loose;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Loose), Self::Error> {
        let v = seed.deserialize(self.variant.into_deserializer())?;
        Ok((v, Loose(self.value)))
    }
}

impl<'de> VariantAccess<'de> for Loose {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        #[serde(rename = "TTL")]
        ttl: String,
        lock_delay: u64,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Outer {
        inner: Option<Inner>,
        list: Vec<Inner>,
        meta: BTreeMap<String, String>,
    }

    #[test]
    fn matches_any_case_and_snake_case_but_keeps_map_keys() {
        let got: Outer = from_slice(
            br#"{"inner":{"ttl":"10s","lock_delay":5},"LIST":[{"Ttl":"1s","LockDelay":1}],
                 "meta":{"Some_Key":"v"}}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            Outer {
                inner: Some(Inner {
                    ttl: "10s".into(),
                    lock_delay: 5
                }),
                list: vec![Inner {
                    ttl: "1s".into(),
                    lock_delay: 1
                }],
                meta: BTreeMap::from([("Some_Key".into(), "v".into())]),
            }
        );
    }

    #[test]
    fn enum_variants_match_loosely() {
        #[derive(Debug, Deserialize, PartialEq)]
        enum Op {
            #[serde(rename = "KV")]
            Kv(Inner),
        }
        let got: Vec<Op> = from_slice(br#"[{"kv":{"TTL":"","LockDelay":0}}]"#).unwrap();
        assert_eq!(
            got,
            vec![Op::Kv(Inner {
                ttl: String::new(),
                lock_delay: 0
            })]
        );
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(from_slice::<Outer>(b"{\"inner\":").is_err());
    }
}
