-- Roles, as Dragonfly's console has them: root manages users and changes anything; guest only
-- reads. Until now the only user was root.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'guest';
UPDATE users SET role = 'root' WHERE name = 'root';
