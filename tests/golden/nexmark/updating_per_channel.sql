-- An updating aggregate: GROUP BY without a window.
CREATE MATERIALIZED VIEW u AS SELECT channel, count(*) AS n, max(price) AS top, min(bidder) AS first_bidder FROM bid GROUP BY channel;
-- oracle
SELECT channel, count(*) AS n, max(price) AS top, min(bidder) AS first_bidder FROM bid GROUP BY channel;
