-- Statements the fuzz test (e2e/sql_fuzz.rs) mutates: every answer must be a result or a 4xx.
CREATE SOURCE events (id BIGINT NOT NULL, user_id BIGINT, amount DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (connector = 'http', max_rows = 500, max_delay = '10ms');
CREATE SOURCE IF NOT EXISTS clicks (user_id BIGINT NOT NULL, page VARCHAR, price DECIMAL(10, 2), day DATE, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'http', format = 'json');
CREATE MATERIALIZED VIEW per_user AS SELECT window_start, window_end, user_id, count(*) AS n, sum(amount) AS total, min(amount) AS low, max(amount) AS high FROM TUMBLE(events, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, user_id;
CREATE MATERIALIZED VIEW big AS SELECT id, user_id, amount * 0.9 AS net, ts FROM events WHERE amount > 90 AND user_id IS NOT NULL;
CREATE MATERIALIZED VIEW hop AS SELECT window_start, window_end, count(DISTINCT user_id) AS users, avg(amount) AS mean FROM HOP(events, ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) WHERE amount > 0 GROUP BY window_start, window_end HAVING count(*) > 1;
CREATE MATERIALIZED VIEW per_channel AS SELECT window_start, window_end, channel, count(*) AS n, sum(price) AS total, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND) WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple') GROUP BY window_start, window_end, channel;
CREATE MATERIALIZED VIEW filtered AS SELECT auction, bidder, price, lower(channel) AS c, date_time FROM bids WHERE price > 1000000 AND url LIKE '%nexmark%';
CREATE MATERIALIZED VIEW agg_filter AS SELECT window_start, auction, count(*) FILTER (WHERE channel = 'Google') AS g, stddev(price) AS s FROM TUMBLE(bids, date_time, INTERVAL '1' MINUTE) GROUP BY window_start, window_end, auction;
SELECT channel, sum(n) AS total FROM per_channel GROUP BY channel ORDER BY total DESC LIMIT 3;
SELECT count(*) AS n FROM big b JOIN per_user p ON b.user_id = p.user_id AND b.ts >= p.window_start AND b.ts < p.window_end;
SELECT * FROM (SELECT 1 AS x) a JOIN (SELECT 2 AS x) b ON true;
SELECT CAST('2026-01-01' AS TIMESTAMP) + INTERVAL '1' DAY, 1 / 2, 'x' || NULL, abs(-3.5);
SHOW SOURCES;
SHOW VIEWS;
DROP VIEW IF EXISTS nothing_here;
DROP SOURCE IF EXISTS nothing_here;
EXPLAIN VIEW per_user;
EXPLAIN CREATE MATERIALIZED VIEW e AS SELECT window_start, count(*) FROM HOP(events, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY window_start, window_end;
