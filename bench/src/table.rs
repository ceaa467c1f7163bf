//! Markdown tables for the figures (pasted as they are into BENCHMARKS.md).

use std::fmt;

/// A table with a header row; cells are text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Self {
            header: header.iter().map(|s| s.as_ref().to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (short rows are padded with empty cells).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let mut width = vec![3usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, w) in width.iter_mut().enumerate() {
                *w = (*w).max(cell(r, i).chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, r: &Vec<String>| -> fmt::Result {
            f.write_str("|")?;
            for (i, w) in width.iter().enumerate() {
                let c = cell(r, i);
                let pad = w - c.chars().count();
                write!(f, " {c}{} |", " ".repeat(pad))?;
            }
            f.write_str("\n")
        };
        line(f, &self.header)?;
        f.write_str("|")?;
        for w in &width {
            write!(f, " {} |", "-".repeat(*w))?;
        }
        f.write_str("\n")?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

/// `PASS` or `MISS`.
pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new(&["a", "value"]);
        t.row(["x", "1"]).row(["longer", "22"]).row(["short"]);
        assert_eq!(
            t.to_string(),
            "| a      | value |\n| ------ | ----- |\n| x      | 1     |\n| longer | 22    |\n| short  |       |\n"
        );
        assert_eq!(verdict(true), "PASS");
    }
}
