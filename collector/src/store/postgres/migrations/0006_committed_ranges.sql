-- Tributary PostgreSQL schema, migration 6: out-of-order delivery. What an
-- (agent, epoch) has committed is a set of sequences: every one up to
-- `committed_seq`, plus the ranges in `committed_ranges` above it (the
-- encoding of collector/src/store/committed.rs: a format byte, then per
-- range the gap below it and its length as LEB128 numbers). Written in the
-- same transaction as the readings, under the row lock. Additive: NULL (no
-- ranges) in every existing row, which is what a collector that sends and
-- acks in sequence order leaves.
ALTER TABLE epochs ADD COLUMN IF NOT EXISTS committed_ranges BYTEA;
