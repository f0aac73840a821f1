-- Local account passwords: one argon2id PHC string per user (never the password itself).
CREATE TABLE user_passwords (
    user_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES users (id),
    phc         TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
