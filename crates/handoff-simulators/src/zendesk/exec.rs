//! Turning a request payload `{query, variables?, operationName?}` into a checked operation,
//! and shaping result values by a selection set (aliases, fragments, `@skip`/`@include`,
//! `__typename`), with the errors a GraphQL server gives for what does not fit.

use std::sync::Arc;

use graphql_parser::query::{
    Definition, Directive, Document, Field, FragmentDefinition, OperationDefinition, Selection,
    SelectionSet, TypeCondition,
};
use serde_json::{Map, Value, json};

use super::schema::{self, Ty, Vars};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    Query,
    Mutation,
    Subscription,
}

impl OpKind {
    pub(super) fn root_type(self) -> &'static str {
        match self {
            Self::Query => "Query",
            Self::Mutation => "Mutation",
            Self::Subscription => "Subscription",
        }
    }
}

/// One operation of a parsed document, with its variables resolved.
#[derive(Debug, Clone)]
pub(super) struct Op {
    doc: Arc<Document<'static, String>>,
    index: usize,
    pub vars: Vars,
}

impl Op {
    /// Parses and prepares the operation a request payload asks for.
    pub(super) fn prepare(payload: &Value) -> Result<Op, String> {
        let Some(query) = payload.get("query").and_then(Value::as_str) else {
            return Err("Must provide query string.".into());
        };
        let query = normalise_strings(query)?;
        let doc = graphql_parser::parse_query::<String>(&query)
            .map_err(|e| {
                let detail = e.to_string();
                let detail = detail
                    .strip_prefix("query parse error: ")
                    .unwrap_or(&detail);
                format!("Syntax Error: {}", detail.trim_end().replace('\n', " "))
            })?
            .into_static();
        let operation_name = match payload.get("operationName") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err("Expected operationName to be a string.".into()),
        };
        let ops: Vec<(usize, Option<&str>)> = doc
            .definitions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Definition::Operation(op) => Some((i, op_name(op))),
                Definition::Fragment(_) => None,
            })
            .collect();
        let index = match operation_name {
            Some(wanted) => ops
                .iter()
                .find(|(_, name)| *name == Some(wanted))
                .map(|(i, _)| *i)
                .ok_or_else(|| format!("Unknown operation named \"{wanted}\"."))?,
            None if ops.len() == 1 => ops[0].0,
            None if ops.is_empty() => return Err("Must provide an operation.".into()),
            None => {
                return Err(
                    "Must provide operation name if query contains multiple operations.".into(),
                );
            }
        };
        let variables = match payload.get("variables") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err("Variables must be provided as an Object.".into()),
        };
        let mut op = Op {
            doc: Arc::new(doc),
            index,
            vars: Vars::default(),
        };
        op.vars = op.resolve_vars(&variables)?;
        Ok(op)
    }

    fn definition(&self) -> &OperationDefinition<'static, String> {
        match &self.doc.definitions[self.index] {
            Definition::Operation(op) => op,
            // `index` only ever points at an operation (see `prepare`).
            Definition::Fragment(_) => unreachable!("operation index points at a fragment"),
        }
    }

    pub(super) fn kind(&self) -> OpKind {
        match self.definition() {
            OperationDefinition::SelectionSet(_) | OperationDefinition::Query(_) => OpKind::Query,
            OperationDefinition::Mutation(_) => OpKind::Mutation,
            OperationDefinition::Subscription(_) => OpKind::Subscription,
        }
    }

    fn selection_set(&self) -> &SelectionSet<'static, String> {
        match self.definition() {
            OperationDefinition::SelectionSet(s) => s,
            OperationDefinition::Query(q) => &q.selection_set,
            OperationDefinition::Mutation(m) => &m.selection_set,
            OperationDefinition::Subscription(s) => &s.selection_set,
        }
    }

    fn fragment(&self, name: &str) -> Option<&FragmentDefinition<'static, String>> {
        self.doc.definitions.iter().find_map(|d| match d {
            Definition::Fragment(f) if f.name == name => Some(f),
            _ => None,
        })
    }

    /// Declared variables: provided values (or defaults) coerced to the declared types.
    fn resolve_vars(&self, provided: &Map<String, Value>) -> Result<Vars, String> {
        let defs = match self.definition() {
            OperationDefinition::SelectionSet(_) => return Ok(Vars::default()),
            OperationDefinition::Query(q) => &q.variable_definitions,
            OperationDefinition::Mutation(m) => &m.variable_definitions,
            OperationDefinition::Subscription(s) => &s.variable_definitions,
        };
        let mut vars = Vars::default();
        for def in defs {
            let ty = Ty::from_ast(&def.var_type);
            schema::check_input_type(&ty)?;
            let value = match (provided.get(&def.name), &def.default_value) {
                (Some(v), _) => schema::coerce_json(v, &ty).map_err(|e| {
                    format!("Variable \"${}\" got invalid value {v}; {e}", def.name)
                })?,
                (None, Some(default)) => schema::coerce_literal(default, &ty, &Vars::default())?,
                (None, None) if ty.is_non_null() => {
                    return Err(format!(
                        "Variable \"${}\" of required type \"{ty}\" was not provided.",
                        def.name
                    ));
                }
                (None, None) => Value::Null,
            };
            vars.values.insert(def.name.clone(), value);
            vars.types.insert(def.name.clone(), ty);
        }
        Ok(vars)
    }

    /// The root fields the operation selects, fragments expanded.
    pub(super) fn root_fields(&self) -> Result<Vec<&Field<'static, String>>, String> {
        let mut fields = Vec::new();
        self.collect_fields(
            self.selection_set(),
            self.kind().root_type(),
            &mut fields,
            0,
        )?;
        Ok(fields)
    }

    fn collect_fields<'o>(
        &'o self,
        set: &'o SelectionSet<'static, String>,
        typename: &str,
        out: &mut Vec<&'o Field<'static, String>>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > 32 {
            return Err("Cannot spread fragment within itself.".into());
        }
        for selection in &set.items {
            match selection {
                Selection::Field(f) => {
                    if self.included(&f.directives)? {
                        out.push(f);
                    }
                }
                Selection::InlineFragment(inline) => {
                    if !self.included(&inline.directives)? {
                        continue;
                    }
                    if let Some(TypeCondition::On(condition)) = &inline.type_condition {
                        if !schema::is_output_type(condition) {
                            return Err(format!("Unknown type \"{condition}\"."));
                        }
                        if !schema::satisfies(typename, condition) {
                            continue;
                        }
                    }
                    self.collect_fields(&inline.selection_set, typename, out, depth + 1)?;
                }
                Selection::FragmentSpread(spread) => {
                    if !self.included(&spread.directives)? {
                        continue;
                    }
                    let Some(fragment) = self.fragment(&spread.fragment_name) else {
                        return Err(format!("Unknown fragment \"{}\".", spread.fragment_name));
                    };
                    let TypeCondition::On(condition) = &fragment.type_condition;
                    if !schema::is_output_type(condition) {
                        return Err(format!("Unknown type \"{condition}\"."));
                    }
                    if schema::satisfies(typename, condition) {
                        self.collect_fields(&fragment.selection_set, typename, out, depth + 1)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn included(&self, directives: &[Directive<'static, String>]) -> Result<bool, String> {
        for d in directives {
            let skip = match d.name.as_str() {
                "skip" => true,
                "include" => false,
                other => return Err(format!("Unknown directive \"@{other}\".")),
            };
            let Some((_, arg)) = d.arguments.iter().find(|(name, _)| name == "if") else {
                return Err(format!(
                    "Directive \"@{}\" argument \"if\" of type \"Boolean!\" is required, but it was not provided.",
                    d.name
                ));
            };
            let on = schema::coerce_literal(arg, &Ty::parse("Boolean!"), &self.vars)?
                .as_bool()
                .unwrap_or(false);
            if on == skip {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Shapes `value` (an object carrying `__typename`) by `set`.
    pub(super) fn project(
        &self,
        value: &Value,
        set: &SelectionSet<'static, String>,
    ) -> Result<Value, String> {
        let typename = value
            .get("__typename")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut fields = Vec::new();
        self.collect_fields(set, typename, &mut fields, 0)?;
        let mut out = Map::new();
        for f in fields {
            let shaped = if f.name == "__typename" {
                json!(typename)
            } else {
                let Some(v) = value.get(&f.name) else {
                    return Err(format!(
                        "Cannot query field \"{}\" on type \"{typename}\".",
                        f.name
                    ));
                };
                // Only root fields take arguments among the fields modelled here.
                if let Some((arg, _)) = f.arguments.first() {
                    return Err(format!(
                        "Unknown argument \"{arg}\" on field \"{typename}.{}\".",
                        f.name
                    ));
                }
                self.complete(v, f)?
            };
            merge(&mut out, response_key(f), shaped);
        }
        Ok(Value::Object(out))
    }

    /// Shapes the value of field `f` by the field's own sub-selection.
    pub(super) fn complete(&self, v: &Value, f: &Field<'static, String>) -> Result<Value, String> {
        let has_selection = !f.selection_set.items.is_empty();
        match v {
            Value::Null => Ok(Value::Null),
            Value::Array(items) => items
                .iter()
                .map(|item| self.complete(item, f))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(o) if !has_selection => {
                let typename = o
                    .get("__typename")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Err(format!(
                    "Field \"{}\" of type \"{typename}\" must have a selection of subfields. Did you mean \"{} {{ ... }}\"?",
                    f.name, f.name
                ))
            }
            Value::Object(_) => self.project(v, &f.selection_set),
            scalar if has_selection => Err(format!(
                "Field \"{}\" must not have a selection since type \"{}\" has no subfields.",
                f.name,
                scalar_type(scalar)
            )),
            scalar => Ok(scalar.clone()),
        }
    }
}

pub(super) fn response_key(f: &Field<'static, String>) -> String {
    f.alias.clone().unwrap_or_else(|| f.name.clone())
}

fn op_name<'a>(op: &'a OperationDefinition<'static, String>) -> Option<&'a str> {
    match op {
        OperationDefinition::SelectionSet(_) => None,
        OperationDefinition::Query(q) => q.name.as_deref(),
        OperationDefinition::Mutation(m) => m.name.as_deref(),
        OperationDefinition::Subscription(s) => s.name.as_deref(),
    }
}

fn scalar_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "Boolean",
        Value::Number(n) if n.is_f64() => "Float",
        Value::Number(_) => "Int",
        _ => "String",
    }
}

/// The same response key selected twice merges (`a { x } a { y }` → `a { x y }`).
fn merge(out: &mut Map<String, Value>, key: String, value: Value) {
    match (out.get_mut(&key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => {
            for (k, v) in new {
                merge(existing, k, v);
            }
        }
        (_, value) => {
            out.insert(key, value);
        }
    }
}

/// Brings string literals to what `graphql-parser` decodes the way the GraphQL spec (and
/// graphql-js, which the real service most likely runs) does. Left alone, the parser would
/// turn `\b` into U+0010, reject an escaped surrogate pair (`\uD83D\uDE00`, how JSON-style
/// escapers write an emoji) that the real service accepts, and let raw control characters
/// through that the real service rejects. Comments and block strings pass unchanged.
fn normalise_strings(query: &str) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        if c == '#' {
            let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else if rest.starts_with("\"\"\"") {
            let body = &rest[3..];
            let mut end = None;
            let mut search = 0;
            while let Some(found) = body[search..].find("\"\"\"") {
                let at = search + found;
                if body[..at].ends_with('\\') {
                    search = at + 3;
                } else {
                    end = Some(at);
                    break;
                }
            }
            let Some(end) = end else {
                return Err("Syntax Error: Unterminated string.".into());
            };
            out.push_str(&rest[..3 + end + 3]);
            rest = &rest[3 + end + 3..];
        } else if c == '"' {
            let (literal, consumed) = normalise_string(rest)?;
            out.push_str(&literal);
            rest = &rest[consumed..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(out)
}

/// One `"..."` literal at the start of `s`: its rewritten text and how many bytes it took.
fn normalise_string(s: &str) -> Result<(String, usize), String> {
    let mut out = String::from("\"");
    let mut chars = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                return Ok((out, i + 1));
            }
            '\n' | '\r' => return Err("Syntax Error: Unterminated string.".into()),
            '\\' => {
                let Some((_, escaped)) = chars.next() else {
                    break;
                };
                match escaped {
                    'b' => out.push_str("\\u0008"),
                    'u' => {
                        let hex: String = (0..4)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        let unit = u32::from_str_radix(&hex, 16).ok();
                        match unit {
                            Some(high @ 0xD800..=0xDBFF) => {
                                let low = low_surrogate(&mut chars);
                                match low.and_then(|low| {
                                    char::from_u32(
                                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00),
                                    )
                                }) {
                                    Some(ch) => out.push(ch),
                                    None => {
                                        return Err(format!(
                                            "Syntax Error: Invalid Unicode escape sequence: \"\\u{hex}\"."
                                        ));
                                    }
                                }
                            }
                            _ => {
                                out.push_str("\\u");
                                out.push_str(&hex);
                            }
                        }
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            }
            c if (c as u32) < 0x20 && c != '\t' => {
                return Err(format!(
                    "Syntax Error: Invalid character within String: U+{:04X}.",
                    c as u32
                ));
            }
            c => out.push(c),
        }
    }
    Err("Syntax Error: Unterminated string.".into())
}

/// Consumes `\uDCxx` right after a high surrogate, if that is what follows.
fn low_surrogate(
    chars: &mut std::iter::Peekable<impl Iterator<Item = (usize, char)> + Clone>,
) -> Option<u32> {
    let mut ahead = chars.clone();
    if ahead.next()?.1 != '\\' || ahead.next()?.1 != 'u' {
        return None;
    }
    let hex: String = (0..4)
        .filter_map(|_| ahead.next().map(|(_, c)| c))
        .collect();
    let low = u32::from_str_radix(&hex, 16)
        .ok()
        .filter(|u| (0xDC00..=0xDFFF).contains(u))?;
    *chars = ahead;
    Some(low)
}
