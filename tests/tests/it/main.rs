//! Integration tests against real `nats-server` and `redis-server`. One binary with modules
//! keeps link times down.

mod world;

mod crash;
mod degraded;
mod fuzz;
mod limits;
mod malformed;
mod model;
mod orders;
mod secrets;
mod security;
mod stock_facts;
mod topology;
