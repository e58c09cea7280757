//! No SQL text makes weir fail: every statement of tests/sql/corpus.sql, truncated or with
//! tokens swapped, dropped or repeated, must answer a result or a 4xx, and the server must
//! keep answering.

use anyhow::Result;

use crate::support::Weir;

/// A small deterministic generator (xorshift): the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn mutate(sql: &str, rng: &mut Rng) -> String {
    let mut tokens: Vec<&str> = sql.split_whitespace().collect();
    let n = tokens.len();
    match rng.below(5) {
        0 => {
            // Truncate at a character boundary.
            let cut = sql
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.below(sql.chars().count()))
                .unwrap_or(0);
            return sql[..cut].to_string();
        }
        1 => tokens.swap(rng.below(n), rng.below(n)),
        2 => {
            tokens.remove(rng.below(n));
        }
        3 => {
            let t = tokens[rng.below(n)];
            tokens.insert(rng.below(n), t);
        }
        _ => {
            // Cut inside a token: unbalanced quotes and parentheses.
            let i = rng.below(n);
            let t = tokens[i];
            tokens[i] = &t[..t
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.below(t.chars().count()))
                .unwrap_or(0)];
        }
    }
    tokens.join(" ")
}

#[tokio::test]
async fn mutated_sql_answers_a_result_or_a_4xx() -> Result<()> {
    let corpus = include_str!("../sql/corpus.sql");
    let statements: Vec<&str> = corpus
        .split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    assert!(
        statements.len() >= 15,
        "corpus has {} statements",
        statements.len()
    );

    let weir = Weir::start(&[]).await?;
    // A small finite Nexmark source for the statements that read `bids`; it is never
    // mutated, so no mutation can start an unbounded generator.
    weir.exec(
        "CREATE SOURCE bids WITH (connector = 'nexmark', table = 'bid', events = 2000, seed = 1)",
    )
    .await?;
    for sql in &statements {
        let (status, body) = weir.sql(sql).await?;
        assert!(
            status == 200,
            "the corpus itself must run: {sql}\n{status} {body}"
        );
    }

    let mut rng = Rng(0x5eed_cafe_f00d);
    let mut answered = [0usize; 2];
    for sql in &statements {
        for _ in 0..100 {
            let mutated = mutate(sql, &mut rng);
            let (status, body) = weir.sql(&mutated).await?;
            assert!(status < 500, "{mutated}\nanswered {status}: {body}");
            if status >= 400 {
                assert!(
                    body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{mutated}\nno detail: {body}"
                );
            }
            answered[usize::from(status >= 400)] += 1;
        }
    }
    assert!(
        answered[1] > answered[0],
        "most mutations should be errors: {answered:?}"
    );
    let health = weir
        .client
        .get(format!("{}/healthz", weir.url))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    Ok(())
}
