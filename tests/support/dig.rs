//! What `dig` answered, read from its default output: the status and the
//! data of each answer record.

/// `(status, data of each answer)` from dig's output: the status as the
/// header says it (`NOERROR`, `NXDOMAIN`, ...), and for each line of the
/// answer section what follows `OWNER TTL CLASS TYPE` (an address, `0 0
/// 8000 bravo.agent.internal.`, `"txtvers=1" "path=/mcp"`).
#[allow(dead_code)] // Each test binary compiles support/ and uses part of it.
pub fn parse(stdout: &str) -> Result<(String, Vec<String>), String> {
    let status = stdout
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .ok_or_else(|| format!("no status in dig's output:\n{stdout}"))?
        .to_string();
    let answers = stdout
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|section| {
            section
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(|line| {
                    line.split_whitespace()
                        .skip(4)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((status, answers))
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_and_answer_data_are_read() {
        let out = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
                   ;; ANSWER SECTION:\n\
                   _mcp._tcp.bravo.agent.internal.\t10 IN\tSRV\t0 0 8000 bravo.agent.internal.\n\
                   \n;; Query time: 0 msec\n";
        let (status, answers) = super::parse(out).expect("parses");
        assert_eq!(status, "NOERROR");
        assert_eq!(answers, ["0 0 8000 bravo.agent.internal."]);
        assert!(super::parse("garbage").is_err());
    }
}
