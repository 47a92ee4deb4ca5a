//! Delivers derived events to webhook subscriptions, signed, retried, dead-lettered.
