//! Integration tests against real `nats-server` and `redis-server`. One binary with modules
//! keeps link times down.

mod world;

mod crash;
mod degraded;
mod faults;
mod malformed;
mod model;
mod orders;
mod stock_facts;
mod topology;
