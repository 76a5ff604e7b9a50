-- Join tokens: a member presenting one gets a certificate for the token's role from the
-- manager's CA. Only the SHA-256 of a token is stored; it is shown once, at creation.
CREATE TABLE join_tokens (
    id BIGSERIAL PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Members the CA issued certificates to: an ID stays with the addresses it first joined
-- from (a token holder cannot take another member's ID), and a revoked ID is refused
-- certificates until it is forgotten.
CREATE TABLE issued_members (
    role TEXT NOT NULL,
    member_id TEXT NOT NULL,
    ips TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revoked_at TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    PRIMARY KEY (role, member_id)
);
