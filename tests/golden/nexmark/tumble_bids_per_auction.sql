-- Bids per auction in 10-second tumbling windows (the inner query of Nexmark q5, tumbling).
CREATE MATERIALIZED VIEW t AS
SELECT window_start, window_end, auction, count(*) AS num, max(price) AS top
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, auction;
-- oracle
SELECT date_bin(INTERVAL '10 seconds', date_time) AS window_start,
       date_bin(INTERVAL '10 seconds', date_time) + INTERVAL '10 seconds' AS window_end,
       auction, count(*) AS num, max(price) AS top
FROM bid GROUP BY 1, 2, 3;
