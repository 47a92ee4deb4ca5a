//! The core scenarios on clusters: a 3-node NATS JetStream cluster (streams at R3) and a Redis
//! Cluster of three primaries with a replica each, all on loopback. Then failover under load: the
//! node that leads a stream is killed, and separately a Redis primary, while events flow.

mod world;

mod backorders;
mod channels;
mod failover;
mod kits;
mod partitions;
mod scenarios;
