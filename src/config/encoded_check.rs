//! The allow-list check ([`support::check`]) on encoded bytes, for the many resources
//! of an xDS response: the same verdict without building reflective messages, and
//! without the descriptor pool. The pool (~12 MB decoded) is needed only to resolve the
//! allow-list once into a [`Schema`]; after that an xDS push checks against the schema
//! alone, so the pool can be released between pushes.
//!
//! On a failure the caller runs [`support::check`] on a decoded message for the error
//! that names the field.
use std::{collections::HashMap, sync::OnceLock};

use prost::encoding::decode_varint;
use prost_reflect::Kind;

use super::{proto, support};

/// The allow-listed types, each with its allowed fields by number. Looked up for every
/// message of every resource, by names from config: foldhash, not SipHash.
struct Schema {
    types: HashMap<&'static str, Vec<Field>, foldhash::fast::RandomState>,
}

struct Field {
    number: u32,
    holds: Holds,
}

/// What a field's length-delimited payload is, as far as the check cares.
enum Holds {
    /// Strings, bytes, packed numbers: nothing to descend into.
    Plain,
    /// A message of the named type (`google.protobuf.Any` included).
    Message(String),
    /// A map whose values are messages of the named type.
    MapOf(String),
}

static SCHEMA: OnceLock<Schema> = OnceLock::new();

fn schema() -> &'static Schema {
    SCHEMA.get_or_init(|| {
        let pool = proto::pool();
        let mut types = HashMap::default();
        for (ty, names) in support::supported_fields() {
            let Some(desc) = pool.get_message_by_name(ty) else {
                continue;
            };
            let fields = names
                .iter()
                .filter_map(|n| desc.get_field_by_name(n))
                .map(|f| {
                    let holds = match f.kind() {
                        Kind::Message(m) if f.is_map() => match m.map_entry_value_field().kind() {
                            Kind::Message(v) => Holds::MapOf(v.full_name().to_owned()),
                            _ => Holds::Plain,
                        },
                        Kind::Message(m) => Holds::Message(m.full_name().to_owned()),
                        _ => Holds::Plain,
                    };
                    Field {
                        number: f.number(),
                        holds,
                    }
                })
                .collect();
            types.insert(*ty, fields);
        }
        Schema { types }
    })
}

/// True when a message of type `type_name` encoded as `bytes` sets only allow-listed
/// fields, recursively, `Any` payloads included.
pub fn check(type_name: &str, bytes: &[u8]) -> bool {
    scan(schema(), type_name, bytes).is_some()
}

fn scan(schema: &Schema, type_name: &str, mut buf: &[u8]) -> Option<()> {
    if support::OPEN.contains(&type_name) {
        return Some(());
    }
    let fields = schema.types.get(type_name)?;
    while !buf.is_empty() {
        let (number, body) = next_field(&mut buf)?;
        let number = u32::try_from(number).ok()?;
        let field = fields.iter().find(|f| f.number == number)?;
        match (&field.holds, body) {
            (Holds::Message(ty), Some(body)) => scan_value(schema, ty, body)?,
            (Holds::MapOf(ty), Some(body)) => scan_field(body, 2, |v| scan_value(schema, ty, v))?,
            _ => {}
        }
    }
    Some(())
}

/// A message value: an `Any` is checked by the type it carries, which must be
/// allow-listed itself.
fn scan_value(schema: &Schema, type_name: &str, bytes: &[u8]) -> Option<()> {
    if type_name != "google.protobuf.Any" {
        return scan(schema, type_name, bytes);
    }
    let mut url = "";
    let mut value: &[u8] = &[];
    scan_field(bytes, 1, |b| {
        url = std::str::from_utf8(b).ok()?;
        Some(())
    })?;
    scan_field(bytes, 2, |b| {
        value = b;
        Some(())
    })?;
    let name = proto::type_name(url);
    support::allowed(name)?;
    scan(schema, name, value)
}

/// Calls `f` with every length-delimited occurrence of field `number` in `buf`.
fn scan_field<'a>(
    mut buf: &'a [u8],
    number: u64,
    mut f: impl FnMut(&'a [u8]) -> Option<()>,
) -> Option<()> {
    while !buf.is_empty() {
        if let (n, Some(body)) = next_field(&mut buf)?
            && n == number
        {
            f(body)?;
        }
    }
    Some(())
}

/// Takes one field off the front of `buf`: its number, and its payload when it is
/// length-delimited. `None` on malformed input.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = decode_varint(buf).ok()?;
    let body = match key & 7 {
        0 => {
            decode_varint(buf).ok()?;
            None
        }
        1 => {
            *buf = buf.get(8..)?;
            None
        }
        5 => {
            *buf = buf.get(4..)?;
            None
        }
        2 => {
            let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
            let body = buf.get(..len)?;
            *buf = &buf[len..];
            Some(body)
        }
        _ => return None,
    };
    Some((key >> 3, body))
}
