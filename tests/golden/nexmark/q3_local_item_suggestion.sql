-- Nexmark q3 (local item suggestion): sellers in Oregon, Idaho or California and their
-- auctions in category 10. A join of two sources without windows: each row waits for its
-- match for at most state_ttl of event time, so state stays bounded (Nexmark's sellers
-- are people who registered at most a few seconds before they open an auction).
CREATE MATERIALIZED VIEW q3 WITH (state_ttl = '10 seconds') AS
SELECT P.name, P.city, P.state, A.id
FROM auction AS A JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
-- oracle
SELECT P.name, P.city, P.state, A.id
FROM auction AS A JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
