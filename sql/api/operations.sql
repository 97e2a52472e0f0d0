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
