-- spock-rs: upgrade of the extension's SQL objects from 0.1.0 (spock-rs's first
-- releases) to 6.0.0, the Spock API level spock-rs implements.
--
-- Run by `ALTER EXTENSION spock UPDATE` after the new spock.so is installed and the
-- server restarted. Every change to the extension's SQL objects made after 0.1.0
-- goes here too: tests/tests/upgrade.rs compares an upgraded node's objects with a
-- fresh install's and fails on any difference.

\echo Use "ALTER EXTENSION spock UPDATE" to load this file. \quit

-- Sync events in Spock's layout (native byte order, name zeroed) and flushed.
CREATE FUNCTION spock._sync_event_payload(node_id oid) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'sync_event_payload_wrapper';
ALTER FUNCTION spock._sync_event_payload(oid) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION spock._sync_event_payload(oid) FROM PUBLIC;

-- A marker in the provider's WAL; subscribers have passed it once
-- wait_for_sync_event() returns true there. The payload is Spock's (its message
-- type and this node's id in native byte order, a zeroed name), so Spock
-- subscribers read it too; a non-transactional event is flushed at once, as
-- Spock's is (a transactional one with its commit). 55000 without a local node.
CREATE OR REPLACE FUNCTION spock.sync_event(transactional boolean DEFAULT false)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_logical_emit_message(transactional, 'Spock',
                                              spock._sync_event_payload(spock._local_node_id()), true);
$$;

-- Spock's spock.read_peer_progress(), on a provider that a new node subscribes
-- to (a Spock subscriber calls it right after creating its slot, inside the
-- transaction that imported the slot's snapshot, with the provider's apply
-- workers paused): first a header row with the slot's restart_lsn (the caller
-- ignores it), then for every subscription of this node to another peer than the
-- new node how far this node has applied that peer (remote_commit_lsn: the
-- subscription's origin progress, as in the snapshot) and the apply progress
-- kept in memory (timestamps NULL when not known since the last restart; LSNs
-- never NULL, which the caller requires). The new node takes those positions as
-- its own starting points for each peer.
CREATE FUNCTION spock.read_peer_progress(p_slot_name text, p_provider_node_id oid, p_subscriber_node_id oid)
RETURNS TABLE(lsn pg_lsn, snapshot text, dbid oid, node_id oid, remote_node_id oid,
              remote_commit_ts timestamptz, prev_remote_ts timestamptz, remote_commit_lsn pg_lsn,
              remote_insert_lsn pg_lsn, received_lsn pg_lsn, last_updated_ts timestamptz,
              updated_by_decode boolean)
VOLATILE STRICT LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_restart pg_lsn;
BEGIN
    SELECT s.restart_lsn INTO v_restart FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = p_slot_name;
    RETURN QUERY SELECT v_restart, ''::text, NULL::oid, NULL::oid, NULL::oid, NULL::timestamptz,
                        NULL::timestamptz, NULL::pg_lsn, NULL::pg_lsn, NULL::pg_lsn, NULL::timestamptz, NULL::boolean;
    RETURN QUERY
        SELECT v_restart, ''::text, d.oid, s.sub_target, s.sub_origin, p.remote_commit_ts, p.prev_remote_ts,
               c.applied, GREATEST(p.remote_insert_lsn, c.applied),
               GREATEST(p.received_lsn, c.applied), p.last_updated_ts, false
          FROM spock.subscription s
         CROSS JOIN LATERAL (SELECT spock._subscription_progress(s.sub_slot_name) AS applied) c
         CROSS JOIN (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) d
          LEFT JOIN spock.progress p ON p.node_id = s.sub_target AND p.remote_node_id = s.sub_origin
         WHERE s.sub_target = p_provider_node_id AND s.sub_origin <> p_subscriber_node_id
         ORDER BY s.sub_origin;
END;
$$;

REVOKE ALL ON FUNCTION spock.read_peer_progress(text, oid, oid) FROM PUBLIC;
