//! Output: an aligned table for people, JSON or YAML for scripts. Every
//! command builds one [`View`]; the `-o` flag picks how it is printed.

use serde::Serialize;
use serde_json::Value;

use crate::cli::Format;

pub enum Table {
    /// Columns and rows.
    Rows {
        headers: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
    /// One record, one `key: value` per line.
    Fields(Vec<(&'static str, String)>),
    /// Plain lines (diffs, messages).
    Lines(Vec<String>),
}

pub struct View {
    pub data: Value,
    pub table: Table,
}

impl View {
    /// A list: `data[key]` holds one serialized row per item, the table
    /// one row per item.
    pub fn list<'a, T, R: Serialize>(
        key: &str,
        items: &'a [T],
        headers: Vec<&'static str>,
        json: impl Fn(&'a T) -> R,
        row: impl Fn(&T) -> Vec<String>,
    ) -> View {
        let rows: Vec<Value> = items
            .iter()
            .map(|i| serde_json::to_value(json(i)).unwrap_or(Value::Null))
            .collect();
        let mut data = serde_json::Map::new();
        data.insert(key.into(), Value::Array(rows));
        View {
            data: Value::Object(data),
            table: Table::Rows {
                headers,
                rows: items.iter().map(row).collect(),
            },
        }
    }

    /// One serialized record and how the table shows it.
    pub fn of(data: &impl Serialize, table: Table) -> View {
        View {
            data: serde_json::to_value(data).unwrap_or(Value::Null),
            table,
        }
    }

    /// Adds a top-level field to the JSON / YAML form.
    pub fn with(mut self, key: &str, v: impl Into<Value>) -> View {
        if let Value::Object(m) = &mut self.data {
            m.insert(key.into(), v.into());
        }
        self
    }

    pub fn render(&self, format: Format) -> anyhow::Result<String> {
        Ok(match format {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(&self.data)?),
            Format::Yaml => yaml_serde::to_string(&self.data)?,
            Format::Table => render_table(&self.table),
        })
    }
}

fn render_table(t: &Table) -> String {
    let mut out = String::new();
    match t {
        Table::Rows { headers, rows } => {
            let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
            for r in rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut l = String::new();
                for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                    if i + 1 == cells.len() {
                        l.push_str(c);
                    } else {
                        l.push_str(&format!("{c:<w$}  "));
                    }
                }
                l.trim_end().to_string() + "\n"
            };
            out.push_str(&line(headers.clone()));
            for r in rows {
                out.push_str(&line(r.iter().map(String::as_str).collect()));
            }
            if rows.is_empty() {
                out.push_str("(none)\n");
            }
        }
        Table::Fields(fields) => {
            let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
            for (k, v) in fields {
                out.push_str(&format!("{:<w$} {v}\n", format!("{k}:")));
            }
        }
        Table::Lines(lines) => {
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// Unix ms as a UTC timestamp (`-` for 0).
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Milliseconds as a short duration ("1h2m", "3.5s", "120ms").
pub fn dur(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `0` shown as `-` (an unset filter or id).
pub fn opt(n: u64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = Table::Rows {
            headers: vec!["NAME", "ID"],
            rows: vec![
                vec!["account".into(), "1".into()],
                vec!["a".into(), "22".into()],
            ],
        };
        assert_eq!(render_table(&t), "NAME     ID\naccount  1\na        22\n");
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(dur(120), "120ms");
        assert_eq!(dur(3500), "3.5s");
        assert_eq!(dur(125_000), "2m5s");
        assert_eq!(dur(3_720_000), "1h2m");
    }
}
