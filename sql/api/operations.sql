-- Operating a mesh (docs/operations.md): finding divergence between nodes.
--
-- table_diff(relation, peer): the rows in which this node's copy of a table and a
-- peer's differ, found without shipping the table (spock._table_diff in
-- sql_api/diff.rs; the method in spock_core::diff). peer is a node name (its
-- interface) or a connection string. key is the row's key as JSON; status says
-- whether only this node has it (only_local), only the peer (only_peer) or both
-- with different contents (differs); each side's row, the commit timestamp and the
-- node that wrote it (as commit timestamps record them: track_commit_timestamp).
-- Differences are confirmed after each node has applied what the other had
-- committed (a sync event each way, waited for at most recheck_timeout; 0: no
-- wait), so that rows replication is still carrying are not reported. Not for
-- PUBLIC: the peer is read as the role of its connection string.
CREATE FUNCTION spock.table_diff(relation regclass, peer text, recheck_timeout interval DEFAULT '10 seconds',
    OUT key jsonb, OUT status text, OUT local_row jsonb, OUT peer_row jsonb,
    OUT local_commit_ts timestamptz, OUT peer_commit_ts timestamptz, OUT local_origin text, OUT peer_origin text)
RETURNS SETOF record VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT d.key::jsonb, d.status, d.local_row::jsonb, d.peer_row::jsonb,
           d.local_commit_ts::timestamptz, d.peer_commit_ts::timestamptz, d.local_origin, d.peer_origin
      FROM spock._table_diff(relation, peer,
               coalesce((extract(epoch FROM recheck_timeout) * 1000)::int8, 0)) d;
$$;

-- mesh_diff(): table_diff of every table in a replication set of this node against
-- every other node that has an interface, one summary row each (error: why that
-- pair could not be compared; the counts are NULL then).
CREATE FUNCTION spock.mesh_diff(recheck_timeout interval DEFAULT '10 seconds',
    OUT relation regclass, OUT peer text, OUT only_local bigint, OUT only_peer bigint, OUT differs bigint,
    OUT error text)
RETURNS SETOF record VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_rel regclass;
    v_peer text;
BEGIN
    FOR v_rel IN
        SELECT x.r FROM (SELECT DISTINCT t.set_reloid AS r
                           FROM spock.replication_set_table t
                           JOIN spock.replication_set s ON s.set_id = t.set_id
                           JOIN spock.local_node l ON l.node_id = s.set_nodeid) x
         ORDER BY x.r::text
    LOOP
        FOR v_peer IN
            SELECT n.node_name::text FROM spock.node n JOIN spock.local_node l ON n.node_id <> l.node_id
             WHERE EXISTS (SELECT FROM spock.node_interface i WHERE i.if_nodeid = n.node_id)
             ORDER BY 1
        LOOP
            relation := v_rel;
            peer := v_peer;
            error := NULL;
            BEGIN
                SELECT count(*) FILTER (WHERE d.status = 'only_local'),
                       count(*) FILTER (WHERE d.status = 'only_peer'),
                       count(*) FILTER (WHERE d.status = 'differs')
                  INTO only_local, only_peer, differs
                  FROM spock.table_diff(v_rel, v_peer, recheck_timeout) d;
            EXCEPTION WHEN OTHERS THEN
                only_local := NULL;
                only_peer := NULL;
                differs := NULL;
                error := SQLERRM;
            END;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END;
$$;

-- table_repair(relation, source_node): makes this node's rows of the table that
-- differ from source_node's (table_diff) equal to them: updates and inserts the
-- source's rows, deletes the rows only this node has. Each row is written with the
-- source row's commit timestamp, under the origin of this node's subscription
-- from the node that wrote it, so that later last-update-wins decisions come out
-- as on the source; in spock.repair_mode, so nothing of it is replicated (repair
-- each node that differs). With dry_run only says what it would do. action:
-- updated, inserted or deleted. Connects to this node through its interface (the
-- role there must be a superuser). Not for PUBLIC.
CREATE FUNCTION spock.table_repair(relation regclass, source_node text,
    recheck_timeout interval DEFAULT '10 seconds', dry_run boolean DEFAULT false,
    OUT key jsonb, OUT action text, OUT origin text, OUT commit_ts timestamptz)
RETURNS SETOF record VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.key::jsonb, r.action, r.origin, r.commit_ts::timestamptz
      FROM spock._table_repair(relation, source_node,
               coalesce((extract(epoch FROM recheck_timeout) * 1000)::int8, 0), coalesce(dry_run, false)) r;
$$;

-- remove_node(target_node_name, target_node_dsn): Zodan's procedure, run on the
-- node that leaves. Every other node drops its subscriptions from it (each drop
-- removes its slot here and its origin there) and forgets it; then this node drops
-- its own subscriptions (each drop removes its slot on the provider), forgets the
-- other nodes and drops its own node and sets. Its tables and rows stay. A
-- procedure cannot pin search_path: every name and operator is schema-qualified.
CREATE PROCEDURE spock.remove_node(target_node_name text, target_node_dsn text, verbose_mode boolean DEFAULT true)
LANGUAGE plpgsql AS $$
DECLARE
    v_local text;
    v_peer record;
    v_sub record;
BEGIN
    SELECT n.node_name::text INTO v_local
      FROM spock.local_node l JOIN spock.node n ON n.node_id OPERATOR(pg_catalog.=) l.node_id;
    IF v_local IS NULL OR v_local OPERATOR(pg_catalog.<>) target_node_name THEN
        RAISE EXCEPTION 'This procedure must be run on the node being removed (%). Current node is %',
                        target_node_name, coalesce(v_local, '(none)')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR v_peer IN
        SELECT n.node_name::text AS name,
               (SELECT i.if_dsn FROM spock.node_interface i WHERE i.if_nodeid OPERATOR(pg_catalog.=) n.node_id
                 ORDER BY (i.if_name OPERATOR(pg_catalog.=) n.node_name) DESC, i.if_id LIMIT 1) AS dsn
          FROM spock.node n WHERE n.node_name::text OPERATOR(pg_catalog.<>) v_local ORDER BY 1
    LOOP
        IF v_peer.dsn IS NULL THEN
            RAISE WARNING 'node % has no interface: remove node % there by hand', v_peer.name, target_node_name;
            CONTINUE;
        END IF;
        IF verbose_mode THEN
            RAISE NOTICE 'node %: dropping its subscriptions from node % and forgetting it', v_peer.name, target_node_name;
        END IF;
        PERFORM spock._remote_query(v_peer.dsn, pg_catalog.format(
            'SELECT spock.sub_drop(s.sub_name)::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', target_node_name));
        PERFORM spock._remote_query(v_peer.dsn, pg_catalog.format('SELECT spock.node_drop(%L, true)::text', target_node_name));
    END LOOP;
    FOR v_sub IN SELECT s.sub_name FROM spock.subscription s ORDER BY 1 LOOP
        IF verbose_mode THEN
            RAISE NOTICE 'dropping subscription %', v_sub.sub_name;
        END IF;
        PERFORM spock.sub_drop(v_sub.sub_name);
    END LOOP;
    FOR v_peer IN SELECT n.node_name FROM spock.node n WHERE n.node_name::text OPERATOR(pg_catalog.<>) v_local LOOP
        PERFORM spock.node_drop(v_peer.node_name, true);
    END LOOP;
    PERFORM spock.node_drop(v_local::name, true);
    IF verbose_mode THEN
        RAISE NOTICE 'node % removed', target_node_name;
    END IF;
END;
$$;

-- add_node(src_node_name, src_dsn, new_node_name, new_node_dsn, ...): Zodan's
-- procedure, run on the node that joins (docs/operations.md). It does the steps of
-- docs/sync.md "Adding a node to a running mesh" for every node of the mesh:
--   1. this node's spock node (new_node_dsn must lead to this database);
--   2. for every node P the source subscribes to: a disabled subscription from P
--      (sub_<P>_<new>), committed, then its slot on P, then a sync event of P
--      that the source must have applied (P's changes from then on come from P);
--   3. structure and data from the source (sub_<src>_<new>), which moves the
--      origins of the disabled subscriptions to what the copy holds;
--   4. those subscriptions enabled; the source's replication sets copied here;
--   5. every node subscribes to this one (sub_<new>_<node>), and the procedure
--      returns once each of those subscriptions replicates: from then on what
--      this node commits reaches everyone.
-- Each step commits and checks what exists first, so calling it again after a
-- failure goes on where it stopped; remove_node() undoes a join instead. A step
-- that waits (the sync event, the peers' subscriptions) gives up after timeout
-- seconds; the copy itself is not timed (it ends or fails). Must be CALLed
-- outside a transaction block. add_node manages the other nodes over their DSNs
-- (src_dsn, and the DSNs the source has for its providers), whose role must then
-- be a superuser; admin_conninfo (say 'user=postgres password=...') is appended to
-- each of those DSNs for that instead, while the subscriptions keep the DSNs as
-- they are (a replication role's, for example). The helpers pin search_path; the
-- procedure cannot (it commits), so it only calls them.

-- The error of a failed step, with what to do next.
CREATE FUNCTION spock._add_node_failed(step text, state text, message text, new_node_name text, new_node_dsn text)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'add_node: % failed: %', step, message
        USING ERRCODE = state,
              HINT = format('Fix the cause and CALL spock.add_node() on this node again: it resumes where it stopped. '
                            'To give up instead, CALL spock.remove_node(%L, %L) here: it removes what the join created on every node.',
                            new_node_name, new_node_dsn);
END;
$$;

-- The names of the replication sets of the node at dsn.
CREATE FUNCTION spock._remote_sets(dsn text) RETURNS text[]
STRICT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(q::text[], '{}')
      FROM spock._remote_query(dsn,
               'SELECT pg_catalog.array_agg(s.set_name::text ORDER BY s.set_name)::text
                  FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid') q;
$$;

-- Step 0: the source is src_node_name, new_node_dsn leads here, this database is
-- not another node already. Returns whether this node exists already (a resume).
CREATE FUNCTION spock._add_node_check(src_node_name text, src_admin_dsn text, new_node_name text, new_node_dsn text)
RETURNS boolean CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_here text;
    v_there text;
    v_local text;
BEGIN
    IF src_node_name IS NULL OR src_admin_dsn IS NULL OR new_node_name IS NULL OR new_node_dsn IS NULL THEN
        RAISE EXCEPTION 'add_node: src_node_name, src_dsn, new_node_name and new_node_dsn are required'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF src_node_name = new_node_name THEN
        RAISE EXCEPTION 'add_node: the new node cannot be its own source (%)', new_node_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.node_name::text INTO v_local FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id;
    IF v_local IS NOT NULL AND v_local <> new_node_name THEN
        RAISE EXCEPTION 'add_node: this database is node % already, not %', v_local, new_node_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run add_node on the database that joins, with its node name.';
    END IF;
    SELECT s.system_identifier::text || ' ' || current_database() INTO v_here FROM pg_control_system() s;
    BEGIN
        SELECT q INTO v_there FROM spock._remote_query(new_node_dsn,
            'SELECT s.system_identifier::text || '' '' || pg_catalog.current_database() FROM pg_catalog.pg_control_system() s') q;
    EXCEPTION WHEN OTHERS THEN
        -- (a load balancer's address may not be reachable from behind it)
        RAISE WARNING 'add_node: could not check that new_node_dsn leads to this database: %', SQLERRM
            USING HINT = 'The other nodes subscribe to this node with new_node_dsn: it must reach this database from them.';
        v_there := v_here;
    END;
    IF v_there IS DISTINCT FROM v_here THEN
        RAISE EXCEPTION 'add_node: new_node_dsn leads to another database (%), not this one (%)', v_there, v_here
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Run add_node on the database that joins.';
    END IF;
    BEGIN
        SELECT q INTO v_there FROM spock._remote_query(src_admin_dsn,
            'SELECT n.node_name::text FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id') q;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'add_node: source node % (src_dsn): %', src_node_name, SQLERRM
            USING ERRCODE = 'connection_failure';
    END;
    IF v_there IS DISTINCT FROM src_node_name THEN
        RAISE EXCEPTION 'add_node: src_dsn leads to node %, not %', coalesce(v_there, '(none)'), src_node_name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN v_local IS NOT NULL;
END;
$$;

-- dsn with admin_conninfo appended (its keywords win): how add_node connects to
-- manage a node.
CREATE FUNCTION spock._admin_dsn(dsn text, admin_conninfo text) RETURNS text
CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(admin_conninfo, '') = '' THEN
        RETURN dsn;
    END IF;
    IF dsn ~* '^postgres(ql)?://' THEN
        RAISE EXCEPTION 'add_node: admin_conninfo cannot be added to a connection URI (%)', split_part(dsn, '@', 2)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Give the nodes key=value connection strings.';
    END IF;
    RETURN dsn || ' ' || admin_conninfo;
END;
$$;

-- The nodes the source subscribes to (but the new one), the DSN it reaches each
-- one with, and that DSN with admin_conninfo.
CREATE FUNCTION spock._add_node_peers(src_admin_dsn text, new_node_name text, admin_conninfo text,
    OUT peer text, OUT dsn text, OUT admin_dsn text)
RETURNS SETOF record CALLED ON NULL INPUT VOLATILE LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT j->>'peer', j->>'dsn', spock._admin_dsn(j->>'dsn', admin_conninfo)
      FROM spock._remote_query(src_admin_dsn, format(
               'SELECT DISTINCT ON (n.node_name) pg_catalog.json_build_object(''peer'', n.node_name, ''dsn'', i.if_dsn)::text
                  FROM spock.subscription s
                  JOIN spock.node n ON n.node_id = s.sub_origin
                  JOIN spock.node_interface i ON i.if_id = s.sub_origin_if
                 WHERE n.node_name <> %L
                 ORDER BY n.node_name, s.sub_enabled DESC, s.sub_name', new_node_name)) q,
           LATERAL (SELECT q::jsonb AS j) x
     ORDER BY 1;
$$;

-- Step 2a: this node's disabled subscription from peer. Returns its slot name.
CREATE FUNCTION spock._add_node_peer_sub(new_node_name text, peer text, peer_dsn text, peer_admin_dsn text)
RETURNS name STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || peer || '_' || new_node_name)::name;
    v_slot name;
    v_origin text;
BEGIN
    SELECT s.sub_slot_name, n.node_name::text INTO v_slot, v_origin
      FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin WHERE s.sub_name = v_sub;
    IF v_slot IS NULL THEN
        PERFORM spock.sub_create(v_sub, peer_dsn, spock._remote_sets(peer_admin_dsn), false, false, '{}', '0', false,
                                 enabled := false);
        SELECT s.sub_slot_name INTO v_slot FROM spock.subscription s WHERE s.sub_name = v_sub;
    ELSIF v_origin <> peer THEN
        RAISE EXCEPTION 'subscription % exists already, from node % instead of %', v_sub, v_origin, peer
            USING ERRCODE = 'duplicate_object';
    END IF;
    RETURN v_slot;
END;
$$;

-- Step 2b: the slot of that subscription on peer, then a sync event of peer that
-- the source has applied: the copy from the source will hold every change of peer
-- that this slot does not. Skipped once the copy has started (the slot must
-- exist then). Returns the sync event's LSN (NULL when skipped).
CREATE FUNCTION spock._add_node_peer_slot(src_node_name text, src_admin_dsn text, new_node_name text, peer text,
    peer_admin_dsn text, slot name, timeout integer)
RETURNS pg_lsn STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_exists boolean;
    v_lsn pg_lsn;
    v_reached text;
BEGIN
    SELECT q::boolean INTO v_exists FROM spock._remote_query(peer_admin_dsn, format(
        'SELECT pg_catalog.count(*) > 0 FROM pg_catalog.pg_replication_slots WHERE slot_name = %L', slot)) q;
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = 'sub_' || src_node_name || '_' || new_node_name) THEN
        IF NOT v_exists THEN
            RAISE EXCEPTION 'slot % on node % is gone, but the copy from % has started: changes of % may be missing here',
                            slot, peer, src_node_name, peer
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RETURN NULL;
    END IF;
    IF NOT v_exists THEN
        PERFORM spock._remote_query(peer_admin_dsn, format(
            'SELECT slot_name::text FROM pg_catalog.pg_create_logical_replication_slot(%L, ''spock_output'')', slot));
    END IF;
    SELECT q::pg_lsn INTO v_lsn FROM spock._remote_query(peer_admin_dsn, 'SELECT spock.sync_event()::text') q;
    SELECT q INTO v_reached FROM spock._remote_query(src_admin_dsn, format(
        'CALL spock.wait_for_sync_event(NULL, %L::name, %L::pg_lsn, %s)', peer, v_lsn, timeout)) q;
    IF v_reached IS DISTINCT FROM 't' AND v_reached IS DISTINCT FROM 'true' THEN
        RAISE EXCEPTION 'node % has not applied the changes of node % up to % within % s', src_node_name, peer, v_lsn, timeout
            USING ERRCODE = 'query_canceled';
    END IF;
    RETURN v_lsn;
END;
$$;

-- Step 3a: the subscription from the source with structure and data.
CREATE FUNCTION spock._add_node_source_sub(src_dsn text, src_admin_dsn text, src_node_name text, new_node_name text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || src_node_name || '_' || new_node_name)::name;
BEGIN
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = v_sub) THEN
        RETURN false;
    END IF;
    PERFORM spock.sub_create(v_sub, src_dsn, spock._remote_sets(src_admin_dsn), true, true);
    RETURN true;
END;
$$;

-- Step 3b: waits for the end of that copy (as sub_wait_for_sync). A copy that
-- keeps failing restarts the apply worker every few seconds: after four
-- attempts, gives up with what the worker's error says is in the log.
CREATE FUNCTION spock._add_node_wait_copy(src_node_name text, new_node_name text)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub spock.subscription;
    v_status "char";
    v_pids int[] := '{}';
    v_pid int;
BEGIN
    SELECT * INTO v_sub FROM spock.subscription s WHERE s.sub_name = 'sub_' || src_node_name || '_' || new_node_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % was dropped', 'sub_' || src_node_name || '_' || new_node_name
            USING ERRCODE = 'undefined_object';
    END IF;
    LOOP
        SELECT y.sync_status INTO v_status FROM spock.local_sync_status y
         WHERE y.sync_subid = v_sub.sub_id AND y.sync_nspname IS NULL;
        IF coalesce(v_status, 'r') = 'r' THEN
            SELECT t.sync_status INTO v_status FROM spock.local_sync_status t
             WHERE t.sync_subid = v_sub.sub_id AND t.sync_nspname IS NOT NULL AND t.sync_status <> 'r'
             ORDER BY t.sync_status = 'f' DESC LIMIT 1;
            EXIT WHEN NOT FOUND;
            IF v_status = 'f' THEN
                RAISE EXCEPTION 'the copy of a table failed; see spock.sub_show_table(%L, ...) and the server log', v_sub.sub_name
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END IF;
        PERFORM pg_stat_clear_snapshot();
        FOR v_pid IN SELECT a.pid FROM pg_stat_activity a
                      WHERE a.backend_type = 'spock apply' AND a.application_name = v_sub.sub_slot_name LOOP
            IF v_pid <> ALL (v_pids) THEN
                v_pids := v_pids || v_pid;
            END IF;
        END LOOP;
        IF cardinality(v_pids) > 4 THEN
            RAISE EXCEPTION 'the copy from node % failed at least % times; the apply worker''s error (subscription %) is in this server''s log',
                            src_node_name, cardinality(v_pids) - 1, v_sub.sub_name
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END;
$$;

-- Step 4a: enables this node's subscription from peer.
CREATE FUNCTION spock._add_node_enable(new_node_name text, peer text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sub name := ('sub_' || peer || '_' || new_node_name)::name;
BEGIN
    IF EXISTS (SELECT FROM spock.subscription s WHERE s.sub_name = v_sub AND NOT s.sub_enabled) THEN
        PERFORM spock.sub_enable(v_sub);
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

-- Step 4b: this node's replication sets become the source's: the same sets with
-- the same actions, tables (columns, row filter) and sequences; what the source's
-- sets do not have leaves them here. Tables that are not here are reported.
CREATE FUNCTION spock._add_node_copy_sets(src_admin_dsn text)
RETURNS integer STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_set jsonb;
    v_item jsonb;
    v_name name;
    v_rel regclass;
    v_changes integer := 0;
    v_cols text[];
BEGIN
    FOR v_set IN
        SELECT q::jsonb FROM spock._remote_query(src_admin_dsn, $q$
            SELECT pg_catalog.json_build_object(
                'name', s.set_name, 'ins', s.replicate_insert, 'upd', s.replicate_update,
                'del', s.replicate_delete, 'trunc', s.replicate_truncate,
                'tables', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                              'rel', pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || '.' || pg_catalog.quote_ident(c.relname),
                              'cols', t.set_att_list,
                              'filter', pg_catalog.pg_get_expr(t.set_row_filter, t.set_reloid)))
                             FROM spock.replication_set_table t JOIN pg_catalog.pg_class c ON c.oid = t.set_reloid
                            WHERE t.set_id = s.set_id),
                'seqs', (SELECT pg_catalog.json_agg(pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || '.' || pg_catalog.quote_ident(c.relname))
                           FROM spock.replication_set_seq q JOIN pg_catalog.pg_class c ON c.oid = q.set_seqoid
                          WHERE q.set_id = s.set_id))::text
              FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
             ORDER BY s.set_name $q$) q
    LOOP
        v_name := (v_set->>'name')::name;
        IF NOT EXISTS (SELECT FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                        WHERE s.set_name = v_name) THEN
            PERFORM spock.repset_create(v_name, (v_set->>'ins')::boolean, (v_set->>'upd')::boolean,
                                        (v_set->>'del')::boolean, (v_set->>'trunc')::boolean);
            v_changes := v_changes + 1;
        ELSE
            PERFORM spock.repset_alter(v_name, (v_set->>'ins')::boolean, (v_set->>'upd')::boolean,
                                       (v_set->>'del')::boolean, (v_set->>'trunc')::boolean);
        END IF;
        FOR v_item IN SELECT jsonb_array_elements(CASE WHEN jsonb_typeof(v_set->'tables') = 'array' THEN v_set->'tables' ELSE '[]' END) LOOP
            v_rel := to_regclass(v_item->>'rel');
            IF v_rel IS NULL THEN
                RAISE WARNING 'add_node: table % of replication set % on the source is not here', v_item->>'rel', v_name
                    USING HINT = 'Create it and add it to the set (repset_add_table with synchronize_data).';
                CONTINUE;
            END IF;
            IF EXISTS (SELECT FROM spock.replication_set_table t JOIN spock.replication_set s ON s.set_id = t.set_id
                         JOIN spock.local_node l ON l.node_id = s.set_nodeid
                        WHERE s.set_name = v_name AND t.set_reloid = v_rel) THEN
                CONTINUE;
            END IF;
            v_cols := CASE WHEN jsonb_typeof(v_item->'cols') = 'array'
                           THEN ARRAY(SELECT jsonb_array_elements_text(v_item->'cols')) END;
            PERFORM spock.repset_add_table(v_name, v_rel, false, v_cols, v_item->>'filter', false);
            v_changes := v_changes + 1;
        END LOOP;
        FOR v_item IN SELECT jsonb_array_elements(CASE WHEN jsonb_typeof(v_set->'seqs') = 'array' THEN v_set->'seqs' ELSE '[]' END) LOOP
            v_rel := to_regclass(v_item #>> '{}');
            IF v_rel IS NULL THEN
                RAISE WARNING 'add_node: sequence % of replication set % on the source is not here', v_item #>> '{}', v_name;
                CONTINUE;
            END IF;
            IF NOT EXISTS (SELECT FROM spock.replication_set_seq q JOIN spock.replication_set s ON s.set_id = q.set_id
                             JOIN spock.local_node l ON l.node_id = s.set_nodeid
                            WHERE s.set_name = v_name AND q.set_seqoid = v_rel) THEN
                PERFORM spock.repset_add_seq(v_name, v_rel, false);
                v_changes := v_changes + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN v_changes;
END;
$$;

-- Step 5a: node (managed at node_admin_dsn) subscribes to the new node (at
-- new_node_dsn), unless it does already.
CREATE FUNCTION spock._add_node_subscribe(new_node_name text, new_node_dsn text, node text, node_admin_dsn text)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_have text;
BEGIN
    SELECT q INTO v_have FROM spock._remote_query(node_admin_dsn, format(
        'SELECT s.sub_name::text FROM spock.subscription s JOIN spock.node n ON n.node_id = s.sub_origin
          WHERE n.node_name = %L LIMIT 1', new_node_name)) q;
    IF v_have IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM spock._remote_query(node_admin_dsn, format(
        'SELECT spock.sub_create(%L, %L, %L::text[], false, false)::text',
        'sub_' || new_node_name || '_' || node, new_node_dsn,
        (SELECT array_agg(s.set_name::text ORDER BY s.set_name)
           FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid)));
    RETURN true;
END;
$$;

-- Step 5b: waits until node's subscription to the new node replicates (its slot
-- here exists: what this node commits from then on reaches node).
CREATE FUNCTION spock._add_node_wait_subscriber(new_node_name text, node text, node_admin_dsn text, timeout integer)
RETURNS void STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_status text;
BEGIN
    LOOP
        SELECT q INTO v_status FROM spock._remote_query(node_admin_dsn, format(
            'SELECT s.status FROM spock.sub_show_status() s WHERE s.provider_node = %L
              ORDER BY s.status = ''replicating'' DESC LIMIT 1', new_node_name)) q;
        EXIT WHEN v_status = 'replicating';
        IF clock_timestamp() - v_started > make_interval(secs => timeout) THEN
            RAISE EXCEPTION 'the subscription of node % to this node is % after % s', node, coalesce(v_status, 'missing'), timeout
                USING ERRCODE = 'query_canceled';
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END;
$$;

CREATE PROCEDURE spock.add_node(src_node_name text, src_dsn text, new_node_name text, new_node_dsn text,
    verb boolean DEFAULT false, new_node_location text DEFAULT 'NY', new_node_country text DEFAULT 'USA',
    new_node_info jsonb DEFAULT '{}'::jsonb, timeout integer DEFAULT 600, admin_conninfo text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_src text := spock._admin_dsn(src_dsn, admin_conninfo);
    v_peer record;
    v_slot name;
    v_lsn pg_lsn;
    v_step text;
BEGIN
    -- Each step commits: fails here at once inside a transaction block.
    COMMIT;
    IF spock._add_node_check(src_node_name, v_src, new_node_name, new_node_dsn) THEN
        RAISE NOTICE 'add_node: node % exists: resuming', new_node_name;
    ELSE
        PERFORM spock.node_create(new_node_name::name, new_node_dsn, new_node_location, new_node_country, new_node_info);
        IF verb THEN
            RAISE NOTICE 'add_node: node % created', new_node_name;
        END IF;
    END IF;
    COMMIT;
    FOR v_peer IN SELECT p.* FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription from node %s', v_peer.peer);
            v_slot := spock._add_node_peer_sub(new_node_name, v_peer.peer, v_peer.dsn, v_peer.admin_dsn);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        COMMIT;
        BEGIN
            v_step := pg_catalog.format('slot on node %s and its sync event on node %s', v_peer.peer, src_node_name);
            v_lsn := spock._add_node_peer_slot(src_node_name, v_src, new_node_name, v_peer.peer, v_peer.admin_dsn,
                                               v_slot, timeout);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        IF verb AND v_lsn IS NOT NULL THEN
            RAISE NOTICE 'add_node: slot % on node %; node % has applied node %''s changes up to %',
                         v_slot, v_peer.peer, src_node_name, v_peer.peer, v_lsn;
        END IF;
        COMMIT;
    END LOOP;
    BEGIN
        v_step := pg_catalog.format('subscription from the source node %s', src_node_name);
        IF spock._add_node_source_sub(src_dsn, v_src, src_node_name, new_node_name) AND verb THEN
            RAISE NOTICE 'add_node: copying structure and data from node %', src_node_name;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    COMMIT;
    BEGIN
        v_step := pg_catalog.format('copy from node %s', src_node_name);
        PERFORM spock._add_node_wait_copy(src_node_name, new_node_name);
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    IF verb THEN
        RAISE NOTICE 'add_node: structure and data copied from node %', src_node_name;
    END IF;
    COMMIT;
    FOR v_peer IN SELECT p.peer FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        IF spock._add_node_enable(new_node_name, v_peer.peer) AND verb THEN
            RAISE NOTICE 'add_node: subscription from node % enabled', v_peer.peer;
        END IF;
    END LOOP;
    COMMIT;
    BEGIN
        v_step := pg_catalog.format('copy of the replication sets of node %s', src_node_name);
        PERFORM spock._add_node_copy_sets(v_src);
    EXCEPTION WHEN OTHERS THEN
        PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
    END;
    COMMIT;
    FOR v_peer IN SELECT src_node_name AS peer, v_src AS admin_dsn
                  UNION ALL SELECT p.peer, p.admin_dsn FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription of node %s to this node', v_peer.peer);
            IF spock._add_node_subscribe(new_node_name, new_node_dsn, v_peer.peer, v_peer.admin_dsn) AND verb THEN
                RAISE NOTICE 'add_node: node % subscribes to node %', v_peer.peer, new_node_name;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
    END LOOP;
    COMMIT;
    FOR v_peer IN SELECT src_node_name AS peer, v_src AS admin_dsn
                  UNION ALL SELECT p.peer, p.admin_dsn FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo) p LOOP
        BEGIN
            v_step := pg_catalog.format('subscription of node %s to this node', v_peer.peer);
            PERFORM spock._add_node_wait_subscriber(new_node_name, v_peer.peer, v_peer.admin_dsn, timeout);
        EXCEPTION WHEN OTHERS THEN
            PERFORM spock._add_node_failed(v_step, SQLSTATE, SQLERRM, new_node_name, new_node_dsn);
        END;
        COMMIT;
    END LOOP;
    RAISE NOTICE 'add_node: node % has joined: it replicates with node % and % other node(s)', new_node_name,
                 src_node_name, (SELECT pg_catalog.count(*) FROM spock._add_node_peers(v_src, new_node_name, admin_conninfo));
END;
$$;

-- recover_lost_node(lost_node_name): after a node is gone for good (its server
-- will not come back), makes the surviving nodes converge on every transaction of
-- it that any of them has, then removes it everywhere (docs/operations.md). Run on
-- any survivor; refuses while the lost node still answers at its DSN.
--   1. every survivor (this node and each node it has an interface for) disables
--      its subscriptions from the lost node and reports how far it applied the
--      lost node's stream: the replication origin of that subscription;
--   2. the survivor that applied most of it holds every transaction of the lost
--      node that any survivor has (each applies that stream in order); every other
--      survivor repairs each table of its replication sets from it (table_repair:
--      rows written with their commit timestamp and under the writer's origin, not
--      replicated), after a sync event each way;
--   3. every survivor drops its subscriptions from the lost node, the lost node's
--      slots on it (inactive spock_output slots named after the lost node's
--      subscriptions and used by no survivor) and the node row.
-- One row per step: node, action, detail. Superusers only (it connects to the
-- survivors; admin_conninfo as for add_node).
CREATE FUNCTION spock.recover_lost_node(lost_node_name text, admin_conninfo text DEFAULT NULL,
    recheck_timeout interval DEFAULT '10 seconds', OUT node text, OUT action text, OUT detail text)
RETURNS SETOF record CALLED ON NULL INPUT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_local text;
    v_lost_dsn text;
    v_answers boolean;
    v_survivors jsonb := '[]';
    v_s jsonb;
    v_lsn pg_lsn;
    v_best text;
    v_best_lsn pg_lsn;
    v_rel text;
    v_used text[] := '{}';
    v_word text := '(^|_)' || regexp_replace(lost_node_name, '([.*+?^${}()|\[\]\\])', '\\\1', 'g') || '(_|$)';
BEGIN
    IF lost_node_name IS NULL THEN
        RAISE EXCEPTION 'lost_node_name is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT n.node_name::text INTO v_local FROM spock.local_node l JOIN spock.node n ON n.node_id = l.node_id;
    IF v_local IS NULL THEN
        RAISE EXCEPTION 'this database is not a spock node' USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF v_local = lost_node_name THEN
        RAISE EXCEPTION 'node % cannot recover from losing itself: run recover_lost_node on a surviving node', v_local
            USING ERRCODE = 'object_not_in_prerequisite_state';
    ELSIF NOT EXISTS (SELECT FROM spock.node n WHERE n.node_name = lost_node_name) THEN
        RAISE EXCEPTION 'node % not found', lost_node_name USING ERRCODE = 'undefined_object';
    END IF;
    -- A node that answers is not lost: its transactions would go on arriving.
    FOR v_lost_dsn IN SELECT i.if_dsn FROM spock.node_interface i JOIN spock.node n ON n.node_id = i.if_nodeid
                       WHERE n.node_name = lost_node_name LOOP
        BEGIN
            PERFORM spock._remote_query(spock._admin_dsn(v_lost_dsn, admin_conninfo), 'SELECT 1');
            v_answers := true;
        EXCEPTION WHEN OTHERS THEN
            v_answers := false;
        END;
        IF v_answers THEN
            RAISE EXCEPTION 'node % still answers at its DSN: it is not lost', lost_node_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'To take a running node out of the mesh, CALL spock.remove_node() on it.';
        END IF;
    END LOOP;

    -- 1. The survivors and how far each applied the lost node's stream.
    FOR v_s IN
        SELECT jsonb_build_object('name', d.name, 'dsn', spock._admin_dsn(d.dsn, admin_conninfo))
          FROM (SELECT n.node_name::text AS name,
                       coalesce((SELECT x.if_dsn FROM spock.local_node l
                                   JOIN spock.node_interface x ON x.if_id = l.node_local_interface
                                  WHERE l.node_id = n.node_id),
                                (SELECT x.if_dsn FROM spock.node_interface x WHERE x.if_nodeid = n.node_id
                                  ORDER BY (x.if_name = n.node_name) DESC, x.if_id LIMIT 1)) AS dsn
                  FROM spock.node n WHERE n.node_name <> lost_node_name) d
         WHERE d.dsn IS NOT NULL
         ORDER BY d.name
    LOOP
        PERFORM spock._remote_query(v_s->>'dsn', format(
            'SELECT spock.sub_disable(s.sub_name, true)::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L AND s.sub_enabled', lost_node_name));
        SELECT q::pg_lsn INTO v_lsn FROM spock._remote_query(v_s->>'dsn', format(
            'SELECT pg_catalog.max(spock._subscription_progress(s.sub_slot_name))::text FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', lost_node_name)) q;
        v_survivors := v_survivors || jsonb_build_array(v_s || jsonb_build_object('lsn', v_lsn::text));
        node := v_s->>'name';
        action := 'applied';
        detail := format('node %s''s changes up to %s', lost_node_name, coalesce(v_lsn::text, 'none (no subscription from it)'));
        RETURN NEXT;
        IF v_lsn IS NOT NULL AND (v_best_lsn IS NULL OR v_lsn > v_best_lsn) THEN
            v_best := v_s->>'name';
            v_best_lsn := v_lsn;
        END IF;
        SELECT v_used || coalesce(array_agg(x), '{}') INTO v_used FROM spock._remote_query(v_s->>'dsn',
            'SELECT n.node_name || '' '' || s.sub_slot_name FROM spock.subscription s
               JOIN spock.node n ON n.node_id = s.sub_origin') x;
    END LOOP;

    -- 2. Every survivor behind the most advanced one is repaired from it.
    IF v_best IS NOT NULL THEN
        FOR v_s IN SELECT e FROM jsonb_array_elements(v_survivors) e
                    WHERE e->>'name' <> v_best AND (e->>'lsn' IS NULL OR (e->>'lsn')::pg_lsn < v_best_lsn) LOOP
            FOR v_rel IN SELECT q FROM spock._remote_query(v_s->>'dsn',
                'SELECT DISTINCT pg_catalog.quote_ident(c.relnamespace::regnamespace::text) || ''.'' || pg_catalog.quote_ident(c.relname)
                   FROM spock.replication_set_table t
                   JOIN spock.replication_set s ON s.set_id = t.set_id
                   JOIN spock.local_node l ON l.node_id = s.set_nodeid
                   JOIN pg_catalog.pg_class c ON c.oid = t.set_reloid ORDER BY 1') q LOOP
                node := v_s->>'name';
                action := 'repaired';
                SELECT format('%s: %s rows from node %s', v_rel, q, v_best) INTO detail
                  FROM spock._remote_query(v_s->>'dsn', format(
                      'SELECT pg_catalog.count(*)::text FROM spock.table_repair(%L::regclass, %L, %L::interval)',
                      v_rel, v_best, recheck_timeout)) q;
                RETURN NEXT;
            END LOOP;
        END LOOP;
    END IF;

    -- 3. The lost node goes, everywhere.
    FOR v_s IN SELECT e FROM jsonb_array_elements(v_survivors) e LOOP
        node := v_s->>'name';
        action := 'removed';
        SELECT format('subscriptions from node %s: %s', lost_node_name, coalesce(string_agg(q, ', '), 'none')) INTO detail
          FROM spock._remote_query(v_s->>'dsn', format(
              'SELECT s.sub_name::text || pg_catalog.left(spock.sub_drop(s.sub_name)::text, 0) FROM spock.subscription s
                 JOIN spock.node n ON n.node_id = s.sub_origin WHERE n.node_name = %L', lost_node_name)) q;
        RETURN NEXT;
        SELECT format('its slots here: %s', coalesce(string_agg(q, ', '), 'none')) INTO detail
          FROM spock._remote_query(v_s->>'dsn', format(
              'SELECT r.slot_name::text || pg_catalog.left(pg_catalog.pg_drop_replication_slot(r.slot_name)::text, 0)
                 FROM pg_catalog.pg_replication_slots r
                WHERE r.plugin = ''spock_output'' AND NOT r.active AND r.database = pg_catalog.current_database()
                  AND r.slot_name ~ %L AND r.slot_name <> ALL (%L::text[])',
              v_word,
              (SELECT coalesce(array_agg(split_part(u, ' ', 2)), '{}') FROM unnest(v_used) u
                WHERE split_part(u, ' ', 1) = v_s->>'name'))) q;
        RETURN NEXT;
        PERFORM spock._remote_query(v_s->>'dsn', format('SELECT spock.node_drop(%L, true)::text', lost_node_name));
        detail := format('node %s forgotten', lost_node_name);
        RETURN NEXT;
    END LOOP;
END;
$$;
