-- spock-rs SQL API, apply progress: the views spock.progress and spock.lag_tracker
-- over spock.apply_group_progress() (spock-pgext/src/sql_api/progress.rs),
-- spock.retention over spock.retention_horizon() (sql_api/retention.rs), and
-- spock.apply_workers over pg_stat_activity.

CREATE VIEW spock.progress AS
    SELECT * FROM spock.apply_group_progress()
     WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());

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

CREATE VIEW spock.lag_tracker AS
    SELECT o.node_name AS origin_name,
           r.node_name AS receiver_name,
           max(p.remote_commit_ts) AS commit_timestamp,
           max(p.remote_commit_lsn) AS commit_lsn,
           max(p.remote_insert_lsn) AS remote_insert_lsn,
           max(p.received_lsn) AS received_lsn,
           max(pg_catalog.pg_wal_lsn_diff(p.remote_insert_lsn, p.remote_commit_lsn)) AS replication_lag_bytes,
           max(p.last_updated_ts - p.remote_commit_ts) AS replication_lag
      FROM spock.progress p
      LEFT JOIN spock.node o ON o.node_id = p.remote_node_id
      LEFT JOIN spock.node r ON r.node_id = p.node_id
     GROUP BY o.node_name, r.node_name;
-- How long this database keeps deleted row versions, and which subscriptions hold
-- them: the manager's slot, its xmin, the time of the oldest versions kept (NULL while none are), when
-- the manager last looked, the subscriptions that have not applied what their
-- provider committed before the oldest removal still kept, and up to when rows
-- were removed here (the newest commit timestamp of a removal the manager knew of
-- when it last looked).
CREATE VIEW spock.retention AS
    SELECT 'spock_retain_' || r.dbid AS slot_name,
           s.xmin,
           r.kept_since,
           r.checked_at,
           ARRAY(SELECT b.sub_name FROM spock.subscription b
                  WHERE b.sub_id = ANY (r.held_by) ORDER BY b.sub_name) AS held_by,
           r.removals_until
      FROM spock.retention_horizon() r
      LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = 'spock_retain_' || r.dbid
     WHERE r.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());

-- The apply processes of each subscription: its worker (the leader) and, with
-- parallel apply, its writers, with what they are doing (the activity the
-- workers report, their wait, their local transaction).
CREATE VIEW spock.apply_workers AS
    SELECT s.sub_name,
           CASE a.backend_type WHEN 'spock apply' THEN 'leader' ELSE 'writer' END AS role,
           CASE WHEN a.backend_type = 'spock apply writer'
                THEN pg_catalog.substring(a.application_name, ' writer ([0-9]+)$')::integer END AS writer,
           a.pid,
           a.query AS activity,
           a.wait_event_type,
           a.wait_event,
           a.backend_xid AS xid,
           a.xact_start
      FROM pg_catalog.pg_stat_activity a
      JOIN spock.subscription s
        ON a.application_name = s.sub_slot_name
        OR pg_catalog.left(a.application_name, pg_catalog.length(s.sub_slot_name) + 8) = s.sub_slot_name || ' writer '
     WHERE a.backend_type IN ('spock apply', 'spock apply writer')
       AND a.datname = pg_catalog.current_database();

-- Monitoring: progress is no secret (apply_group_progress() and retention_horizon()
-- are executable by PUBLIC).
GRANT SELECT ON spock.progress, spock.lag_tracker, spock.retention, spock.apply_workers TO PUBLIC;

-- Conflicts met by a subscription's apply since the counters were reset (Spock's
-- spock.get_subscription_stats; counted in shared memory since the server
-- started, not kept across restarts). Zeros for a subscription whose worker has
-- not run yet.
CREATE FUNCTION spock.get_subscription_stats(subid oid,
    OUT subid oid, OUT confl_insert_exists bigint, OUT confl_update_origin_differs bigint,
    OUT confl_update_exists bigint, OUT confl_update_missing bigint,
    OUT confl_delete_origin_differs bigint, OUT confl_delete_missing bigint,
    OUT confl_delete_exists bigint, OUT stats_reset timestamptz)
RETURNS record LANGUAGE sql STABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
    SELECT $1, c[1], c[2], c[3], c[4], c[5], c[6], c[7],
           CASE WHEN c[8] <> 0 THEN '2000-01-01 00:00:00+00'::timestamptz + c[8] * interval '1 microsecond' END
      FROM (SELECT spock._conflict_counts($1) AS c) x;
$$;

-- Deletes the spock.resolutions rows older than `days` days (NULL: the setting
-- spock.resolutions_retention_days; 0 or less deletes nothing) and returns how
-- many went. Each node's manager runs it once a day (Spock's apply workers do).
CREATE FUNCTION spock.cleanup_resolutions(days integer DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_days integer := coalesce(days, current_setting('spock.resolutions_retention_days')::integer);
    v_deleted bigint;
BEGIN
    IF v_days <= 0 THEN
        RETURN 0;
    END IF;
    DELETE FROM spock.resolutions WHERE log_time < now() - make_interval(days => v_days);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$$;
