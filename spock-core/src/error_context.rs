//! The CONTEXT of errors raised inside spock's SQL functions, as the client sees
//! it: spock-pgext's `emit_log_hook` removes the lines of spock's own PL/pgSQL
//! frames, which Spock's functions (written in C) never show.

/// The context without spock's own PL/pgSQL frames; `None` when nothing is removed.
pub fn strip_spock_frames(context: &str) -> Option<String> {
    let lines: Vec<&str> = context.split('\n').collect();
    let spock_frame = |l: &str| l.starts_with("PL/pgSQL function spock.");
    let mut keep = Vec::with_capacity(lines.len());
    let mut removed = false;
    for (i, line) in lines.iter().enumerate() {
        let statement_of_spock_frame =
            line.starts_with("SQL statement \"") && lines.get(i + 1).is_some_and(|next| spock_frame(next));
        if spock_frame(line) || statement_of_spock_frame {
            removed = true;
        } else {
            keep.push(*line);
        }
    }
    removed.then(|| keep.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::strip_spock_frames;

    #[test]
    fn spock_frames_and_their_statements_go_the_callers_stay() {
        let context = "PL/pgSQL function spock._repset(name) line 8 at RAISE\n\
            SQL statement \"SELECT * FROM spock._repset(p_set_name)\"\n\
            PL/pgSQL function spock._repset_add_relation(name,regclass,text[],text,boolean) line 9 at SQL statement\n\
            SQL statement \"SELECT spock._repset_add_relation(set_name, relation, columns, row_filter, false)\"\n\
            PL/pgSQL function spock.repset_add_table(name,regclass,boolean,text[],text,boolean) line 14 at PERFORM\n\
            SQL statement \"SELECT spock.repset_add_table('x', 't')\"\n\
            PL/pgSQL function inline_code_block line 3 at PERFORM";
        assert_eq!(
            strip_spock_frames(context).as_deref(),
            Some("SQL statement \"SELECT spock.repset_add_table('x', 't')\"\nPL/pgSQL function inline_code_block line 3 at PERFORM")
        );
        assert_eq!(
            strip_spock_frames("PL/pgSQL function spock.repset_alter(name) line 15 at RAISE").as_deref(),
            Some("")
        );
        assert_eq!(strip_spock_frames("PL/pgSQL function inline_code_block line 1 at RAISE"), None);
    }
}
