//! Why an operation did not finish.

/// Why a rebuild or a comparison did not finish; the variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis already holds keys under the prefix: a rebuild writes only into an empty database.
    #[error(
        "Redis already holds data: rebuild writes only into an empty database (stop the \
         workers, FLUSHDB, then rebuild)"
    )]
    NotEmpty,
    /// No ledger stream exists: the topology was never declared.
    #[error("no ledger stream (STOCK_CHANGES or STOCK_CHANGES_<p>): run `stockctl setup` first")]
    NoLedger,
    /// NATS or Redis did not answer, or a stream could not be read to its end; the chain of
    /// causes says which. Trying again later may help.
    #[error(transparent)]
    Unavailable(#[from] anyhow::Error),
}
