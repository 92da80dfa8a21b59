//! Canonical JSON: compact, every object's keys sorted by their UTF-8 bytes, at every depth.
//!
//! The order is produced here explicitly, so it does not depend on how `serde_json` happens to
//! store maps (its `preserve_order` feature, turned on anywhere in a build, would keep insertion
//! order instead). Signed bytes must never change because a dependency's features did.

use serde::Serialize;
use serde_json::Value;
use std::io::Write;

/// Serializes `value` as canonical JSON (no trailing newline).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let v = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_value(&mut out, &v)?;
    Ok(out)
}

fn write_value(out: &mut Vec<u8>, v: &Value) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k)?;
                out.push(b':');
                write_value(out, &map[k])?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    // `to_writer` into a Vec cannot fail on I/O; flushing keeps the Write import honest.
    out.flush().map_err(serde_json::Error::io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Unsorted {
        zeta: u32,
        alpha: Vec<Inner>,
        #[serde(rename = "Mid")]
        mid: &'static str,
    }

    #[derive(Serialize)]
    struct Inner {
        y: bool,
        b: Option<u8>,
    }

    #[test]
    fn keys_are_sorted_at_every_depth_whatever_the_declaration_order() {
        let v = Unsorted {
            zeta: 1,
            alpha: vec![Inner { y: true, b: None }],
            mid: "a \"quoted\" é",
        };
        let got = String::from_utf8(to_vec(&v).expect("serializes")).expect("utf-8");
        assert_eq!(
            got,
            r#"{"Mid":"a \"quoted\" é","alpha":[{"b":null,"y":true}],"zeta":1}"#
        );
    }

    #[test]
    fn a_map_built_in_reverse_order_comes_out_sorted() {
        let mut m = serde_json::Map::new();
        m.insert("b".into(), Value::from(2));
        m.insert("a".into(), Value::from(1));
        m.insert("aa".into(), Value::from(3));
        let got = to_vec(&Value::Object(m)).expect("serializes");
        assert_eq!(got, br#"{"a":1,"aa":3,"b":2}"#);
    }
}
