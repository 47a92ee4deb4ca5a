//! Summaries over runs (median, min–max) and the markdown the binary prints or writes.

use std::fmt::Write as _;

/// The values one metric took over the runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Runs(pub(crate) Vec<f64>);

impl Runs {
    pub(crate) fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Median; the mean of the middle two for an even count; NaN when empty.
    pub(crate) fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// `median (min–max)` with `decimals` digits.
    pub(crate) fn show(&self, decimals: usize) -> String {
        if self.0.is_empty() {
            return "–".into();
        }
        if self.0.len() == 1 {
            return format!("{:.decimals$}", self.median());
        }
        format!(
            "{:.decimals$} ({:.decimals$}–{:.decimals$})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

/// Percentile `p` (0..=100) of sorted values.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank; the index is within bounds by construction.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One markdown table.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) title: String,
    pub(crate) note: String,
    pub(crate) headers: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.into(),
            note: String::new(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        if !self.note.is_empty() {
            let _ = write!(out, "{}\n\n", self.note);
        }
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.headers.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// Markers around the block `--write` replaces in BENCHMARKS.md.
pub(crate) const BEGIN: &str = "<!-- bench:results:begin -->";
pub(crate) const END: &str = "<!-- bench:results:end -->";

/// Replaces the marked block of `path` with `body` (appends the block when the markers are
/// missing), so the rest of the document — analysis, optimisation log — stays as written.
pub(crate) fn write_block(path: &std::path::Path, body: &str) -> anyhow::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{body}\n{END}");
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(start), Some(end)) if end > start => {
            format!(
                "{}{block}{}",
                &existing[..start],
                &existing[end + END.len()..]
            )
        }
        _ => format!("{existing}\n{block}\n"),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let runs = Runs(vec![3.0, 1.0, 2.0]);
        assert_eq!(runs.median(), 2.0);
        assert_eq!(runs.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Runs(vec![1.0, 4.0]).median(), 2.5);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
    }

    #[test]
    fn write_block_replaces_only_the_marked_part() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("B.md");
        std::fs::write(&path, format!("intro\n{BEGIN}\nold\n{END}\nanalysis\n")).expect("write");
        write_block(&path, "new").expect("block written");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("intro\n{BEGIN}\nnew\n{END}\nanalysis\n"));
    }
}
