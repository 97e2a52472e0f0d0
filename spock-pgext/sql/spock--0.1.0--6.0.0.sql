-- spock-rs: upgrade of the extension's SQL objects from 0.1.0 (spock-rs's first
-- releases) to 6.0.0, the Spock API level spock-rs implements.
--
-- Run by `ALTER EXTENSION spock UPDATE` after the new spock.so is installed and the
-- server restarted. Every change to the extension's SQL objects made after 0.1.0
-- goes here too: tests/tests/upgrade.rs compares an upgraded node's objects with a
-- fresh install's and fails on any difference.

\echo Use "ALTER EXTENSION spock UPDATE" to load this file. \quit
