-- Bids per auction in 10-second windows sliding every 2 seconds (Nexmark q5's HOP).
CREATE MATERIALIZED VIEW h AS
SELECT window_start, window_end, auction, count(*) AS num
FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, auction;
-- oracle
SELECT to_timestamp_millis(ws) AS window_start, to_timestamp_millis(ws + 10000) AS window_end, auction, count(*) AS num
FROM (SELECT auction, (CAST(date_time AS BIGINT) - CAST(date_time AS BIGINT) % 2000) - k * 2000 AS ws
      FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS o(k))
GROUP BY ws, auction;
