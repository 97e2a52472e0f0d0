-- Writing on every node (docs/multimaster.md): delta apply for counters. The
-- apply side is spock-pgext/src/delta.rs and apply/executor.rs (apply_deltas).

-- spock.delta_apply(old, new, local): what a delta-apply column becomes when an
-- UPDATE from another node changed it from old to new while this node has local:
-- local + (new - old). Spock's name and types; a NULL gives new.
CREATE FUNCTION spock.delta_apply(old smallint, new smallint, local smallint) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old integer, new integer, local integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old bigint, new bigint, local bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old real, new real, local real) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old double precision, new double precision, local double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old numeric, new numeric, local numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';
CREATE FUNCTION spock.delta_apply(old money, new money, local money) RETURNS money
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS
'SELECT CASE WHEN $1 IS NULL OR $3 IS NULL THEN $2 ELSE $3 + ($2 - $1) END';

-- set_delta_apply(relation, column_name, enable): marks (or unmarks) a column for
-- delta apply, with the security label delta_apply of provider spock, here and,
-- with replicate (through replicate_ddl and the ddl_sql set), on the nodes that
-- subscribe to this one. The table needs REPLICA IDENTITY FULL (so that
-- PostgreSQL logs the old value of the column with each UPDATE) and a primary key
-- (by which rows are found: with REPLICA IDENTITY FULL alone every column, the
-- counter included, would have to match).
CREATE FUNCTION spock.set_delta_apply(relation regclass, column_name name, enable boolean DEFAULT true,
    replicate boolean DEFAULT true)
RETURNS boolean STRICT VOLATILE LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_type regtype;
    v_table text;
    v_sql text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = relation AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'relation with OID % does not exist or is not a table', relation::oid USING ERRCODE = 'undefined_table';
    END IF;
    SELECT a.atttypid::regtype INTO v_type FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = relation AND a.attname = column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', column_name, relation USING ERRCODE = 'undefined_column';
    END IF;
    SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) INTO v_table
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    IF enable THEN
        IF to_regprocedure(format('spock.delta_apply(%s,%s,%s)', v_type, v_type, v_type)) IS NULL THEN
            RAISE EXCEPTION 'delta apply adds smallint, integer, bigint, real, double precision, numeric and money, not %', v_type
                USING ERRCODE = 'datatype_mismatch';
        END IF;
        IF (SELECT c.relreplident FROM pg_catalog.pg_class c WHERE c.oid = relation) <> 'f' THEN
            RAISE EXCEPTION 'table % needs REPLICA IDENTITY FULL for delta apply', v_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'The other nodes need the old value of the column with each UPDATE.',
                      HINT = format('ALTER TABLE %s REPLICA IDENTITY FULL', v_table);
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = relation AND i.indisprimary) THEN
            RAISE EXCEPTION 'table % needs a primary key for delta apply', v_table
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Rows are found by their key: with REPLICA IDENTITY FULL alone the counter would have to match too.';
        END IF;
    END IF;
    v_sql := format('SECURITY LABEL FOR spock ON COLUMN %s.%s IS %s', v_table, quote_ident(column_name),
                    CASE WHEN enable THEN quote_literal('delta_apply') ELSE 'NULL' END);
    IF replicate AND EXISTS (SELECT FROM spock.replication_set s JOIN spock.local_node l ON l.node_id = s.set_nodeid
                              WHERE s.set_name = 'ddl_sql') THEN
        PERFORM spock.replicate_ddl(v_sql);
    ELSE
        EXECUTE v_sql;
    END IF;
    RETURN true;
END;
$$;
