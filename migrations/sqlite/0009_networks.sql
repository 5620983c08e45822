-- archfarm schema, version 9: the network of a job's RUN steps, and what each agent allows.
-- Identical in sqlite/ and postgres/.
-- jobs.network: host, none or private; NULL (every job before this version) leaves it to the agent.
-- agents.default_network: the agent's own --network; NULL for agents that did not say.
-- agents.allowed_networks: a JSON array of the networks a job may ask the agent for; NULL (agents
-- from before this version) allows only jobs that leave the network to the agent.

ALTER TABLE jobs ADD COLUMN network TEXT;
ALTER TABLE agents ADD COLUMN default_network TEXT;
ALTER TABLE agents ADD COLUMN allowed_networks TEXT;
