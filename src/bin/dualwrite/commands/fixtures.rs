//! `fixtures`: test and benchmark data.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

/// `fixtures generate`: a new DoX SQLite file of realistic shape.
pub async fn generate(rows: u64, out: &Path, seed: u64) -> Result<ExitCode> {
    let opts = dualwrite::generate::GenerateOptions { rows, seed };
    let report = dualwrite::generate::generate(out, &opts).await?;
    print!("{}", report.render());
    Ok(ExitCode::SUCCESS)
}
