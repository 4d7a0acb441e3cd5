-- Tributary PostgreSQL schema, migration 4: which collector each agent
-- streams to. Every collector sharing the database writes its `name` into
-- the rows of the agents whose streams it accepts (the newest stream
-- wins), so each collector's ListAgents and fleet page show where every
-- agent is connected. Additive: '' until a collector writes a name.
ALTER TABLE agents ADD COLUMN IF NOT EXISTS collector TEXT NOT NULL DEFAULT '';
