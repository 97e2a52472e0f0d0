-- Least privilege. This file comes last in the extension script, after the
-- functions pgrx generates from the Rust code, so both blocks below also cover
-- every function added later, in SQL or in Rust.
--
-- 1. No function of schema spock resolves names through its caller's search_path:
-- a role that may create objects in a schema on that path could otherwise plant a
-- function or operator (say public.quote_ident(name), a better match than the
-- built-in quote_ident(text)) that a superuser would then run through spock. The
-- functions of sql/api/*.sql pin search_path where they are declared; this gives
-- the same pin to any declared elsewhere (procedures cannot have one; see
-- wait_for_sync_event in sync.sql). spock.replicate_ddl still runs the user's DDL
-- under its search_path argument (the caller's by default: defaults are evaluated
-- before the pin takes effect).
DO $pin$
DECLARE
    v_proc record;
BEGIN
    FOR v_proc IN
        SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'spock'::pg_catalog.regnamespace
           AND p.prokind OPERATOR(pg_catalog.=) 'f'
           AND NOT EXISTS (SELECT FROM pg_catalog.unnest(p.proconfig) c
                            WHERE c OPERATOR(pg_catalog.~~) 'search\_path=%')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION spock.%I(%s) SET search_path = pg_catalog, pg_temp',
                                  v_proc.proname, v_proc.args);
    END LOOP;
END
$pin$;

-- 2. Only what reads is callable by every role (PostgreSQL's model: managing
-- replication is for superusers and the roles they grant it to). Everything else,
-- internal helpers (spock._*) and functions added later included, loses EXECUTE for
-- PUBLIC. The read-only functions call no internal helper; what they read is
-- protected by the catalogs' own privileges (spock.node_interface and
-- spock.subscription, which hold DSNs, are not readable by PUBLIC). node_info() must
-- stay callable: spock.sub_create() calls it on the provider as the role of the
-- provider DSN, possibly a replication role that is not superuser.
-- spock.replicate_ddl() runs DDL on every subscriber: it is management too. A role
-- a management function is granted to also needs EXECUTE on the helpers it calls
-- (for replicate_ddl: spock._repset, spock._local_node_id, spock._queue_message) and
-- the privileges on the catalogs it changes (INSERT on spock.queue).
DO $revoke$
DECLARE
    v_proc record;
BEGIN
    FOR v_proc IN
        SELECT p.proname, p.prokind, pg_catalog.pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'spock'::pg_catalog.regnamespace
           AND p.prokind OPERATOR(pg_catalog.=) ANY (ARRAY['f', 'p']::"char"[])
           AND p.proname OPERATOR(pg_catalog.<>) ALL (ARRAY[
                   'node_info', 'repset_show_table', 'sub_show_status', 'sub_show_table',
                   'sub_wait_for_sync', 'table_wait_for_sync', 'wait_slot_confirm_lsn',
                   'spock_version', 'spock_version_num', 'spock_rs_version', 'spock_max_proto_version',
                   'spock_min_proto_version', 'spock_gen_slot_name', 'apply_group_progress',
                   'retention_horizon', '_gen_slot_name', 'get_subscription_stats', '_conflict_counts',
                   '_slot_status'
               ]::pg_catalog.name[])
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON %s spock.%I(%s) FROM PUBLIC',
            CASE v_proc.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, v_proc.proname, v_proc.args);
    END LOOP;
END
$revoke$;
