//! Migrations: the `*.sql` files of a grant's folder, applied in name order, once each, each
//! in a transaction with its row in `kasm_migrations` (its sha256 kept: a file changed after it
//! was applied is refused).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};

use super::{SqlDatabase, SqlValue};

/// Apply the `*.sql` files of `dir` not yet applied for `handler`, in name order, each in
/// its own transaction together with its record in `kasm_migrations`. Returns the names of
/// the files applied now. Each transaction is exclusive among migrations
/// ([`SqlDatabase::begin_migration`]), so hosts starting at once against one database apply
/// each file exactly once: the later ones find it recorded.
pub async fn migrate(
    db: &dyn SqlDatabase,
    handler: &str,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the migrations folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut applied = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading migration {}", file.display()))?;
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        let mut tx = db
            .begin_migration()
            .await
            .with_context(|| format!("taking the migration lock on {}", db.describe()))?;
        tx.batch(
            "CREATE TABLE IF NOT EXISTS kasm_migrations (\
               handler TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, \
               applied_at TEXT NOT NULL, PRIMARY KEY (handler, name))",
        )
        .await
        .context("creating kasm_migrations")?;
        let done = tx
            .query(
                "SELECT sha256 FROM kasm_migrations WHERE handler = $1 AND name = $2",
                &[
                    SqlValue::Text(handler.to_owned()),
                    SqlValue::Text(name.clone()),
                ],
            )
            .await?;
        match done.rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Text(old)) if *old == sha => continue,
            Some(_) => bail!(
                "migration {} was changed after it was applied to {} (add a new file instead)",
                file.display(),
                db.describe()
            ),
            None => {}
        }
        tx.batch(&text)
            .await
            .with_context(|| format!("applying migration {}", file.display()))?;
        tx.execute(
            "INSERT INTO kasm_migrations (handler, name, sha256, applied_at) VALUES ($1, $2, $3, $4)",
            &[
                SqlValue::Text(handler.to_owned()),
                SqlValue::Text(name.clone()),
                SqlValue::Text(sha),
                SqlValue::Text(chrono::Utc::now().to_rfc3339()),
            ],
        )
        .await?;
        tx.commit()
            .await
            .with_context(|| format!("committing migration {}", file.display()))?;
        applied.push(name);
    }
    Ok(applied)
}

// ---------------------------------------------------------------------------------------
// The inbox: which events' SQL effects a handler's database already holds
