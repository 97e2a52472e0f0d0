//! SQL functions of schema `spock`, with Spock's names and signatures.

mod info;
