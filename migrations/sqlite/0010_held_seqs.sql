-- The seqs a rewound agent reused (its hello's `next_seq` up to the stored `last_seq`), held
-- back by every replica's ingest until the agent's next hello: NULL when nothing is held.
-- Kept in the store, not in one replica's memory, because with a broker cluster another
-- replica may take the agent's rows.
ALTER TABLE agents ADD COLUMN held_seq_from BIGINT;
ALTER TABLE agents ADD COLUMN held_seq_to BIGINT;
CREATE INDEX agents_held_seqs ON agents(id) WHERE held_seq_to IS NOT NULL;
