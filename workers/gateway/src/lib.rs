//! HTTP/JSON front door: ingest facts and orders, query stock and orders.
