//! Integration tests against real `nats-server` and `redis-server`. One binary with modules
//! keeps link times down.

mod world;

mod backorder_model;
mod backorders;
mod batch_crash;
mod channel_orders;
mod channels;
mod channels_ops;
mod cli;
mod connectors;
mod connectors_channel;
mod connectors_config;
mod console;
mod consume;
mod crash;
mod dead_letters;
mod degraded;
mod demo;
mod faults;
mod flash_batch;
mod fuzz;
mod gateway;
mod gateway_channels;
mod history;
mod incoming;
mod incoming_model;
mod kits;
mod limits;
mod malformed;
mod model;
mod notify;
mod notify_channels;
mod operator;
mod order_retention;
mod ordering;
mod orders;
mod partitions;
mod rebuild;
mod secrets;
mod security;
mod startup;
mod stock_facts;
mod topology;
mod unsellable;
