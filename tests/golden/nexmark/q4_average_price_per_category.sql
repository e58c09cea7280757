-- Nexmark q4 (average price for a category): the average closing price of the auctions
-- of each category, an auction's closing price being its highest bid while it was open.
-- The inner aggregate groups by the auction's row, its time included (an auction's id
-- determines its time, so the groups are those of nexmark-flink's q4): a group is final
-- once the join has freed that auction (state_ttl after it opened; Nexmark's auctions
-- close within a second), and the outer average takes each final price once.
CREATE MATERIALIZED VIEW q4 WITH (state_ttl = '10 seconds') AS
SELECT Q.category, avg(Q.final) AS avg_final
FROM (SELECT A.id, A.category, A.date_time, max(B.price) AS final
      FROM auction AS A JOIN bid AS B ON A.id = B.auction
      AND B.date_time BETWEEN A.date_time AND A.expires
      GROUP BY A.id, A.category, A.date_time) AS Q
GROUP BY Q.category;
-- oracle
SELECT Q.category, avg(Q.final) AS avg_final
FROM (SELECT max(B.price) AS final, A.category
      FROM auction AS A, bid AS B
      WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
      GROUP BY A.id, A.category) AS Q
GROUP BY Q.category;
