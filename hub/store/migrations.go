package store

// The schema migrations of both backends, in order: version N is element
// N-1, applied once, in one transaction at start (see migrate). Append new
// migrations at the end of both lists; never edit or reorder one that has
// shipped. Each entry may hold several statements separated by ";\n".

var sqliteSchema = []string{
	// 1: initial schema. Times are Unix nanoseconds; 0 means unset.
	`CREATE TABLE tokens (
		hash BLOB PRIMARY KEY,
		kind TEXT NOT NULL,
		device_id TEXT NOT NULL,
		created INTEGER NOT NULL,
		expires INTEGER NOT NULL,
		used INTEGER NOT NULL,
		revoked INTEGER NOT NULL
	);
	CREATE TABLE devices (
		id TEXT PRIMARY KEY,
		key_kind TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after INTEGER NOT NULL,
		enrolled INTEGER NOT NULL,
		revoked INTEGER NOT NULL,
		latest_seq INTEGER NOT NULL,
		state TEXT NOT NULL,
		groups TEXT NOT NULL,
		last_seen INTEGER NOT NULL,
		attest_ok INTEGER,
		attest_time INTEGER NOT NULL DEFAULT 0,
		ak BLOB
	);
	CREATE TABLE reports (
		device_id TEXT NOT NULL,
		seq INTEGER NOT NULL,
		time INTEGER NOT NULL,
		received INTEGER NOT NULL,
		state TEXT NOT NULL,
		body BLOB NOT NULL,
		PRIMARY KEY (device_id, seq)
	) WITHOUT ROWID;
	CREATE INDEX reports_received ON reports (received);
	CREATE TABLE nonces (
		nonce BLOB PRIMARY KEY,
		device_id TEXT NOT NULL,
		expires INTEGER NOT NULL,
		used INTEGER NOT NULL
	);
	CREATE TABLE attestations (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		device_id TEXT NOT NULL,
		time INTEGER NOT NULL,
		ok INTEGER NOT NULL,
		result BLOB NOT NULL
	);
	CREATE INDEX attestations_device ON attestations (device_id, id);
	CREATE TABLE pokes (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		grp TEXT NOT NULL,
		devices TEXT NOT NULL,
		commit_id TEXT NOT NULL,
		reason TEXT NOT NULL,
		time INTEGER NOT NULL
	);
	CREATE TABLE ca (
		id INTEGER PRIMARY KEY,
		cert BLOB NOT NULL,
		key BLOB NOT NULL
	)`,
	// 2: device receipts for offline bundles, and the public key each device
	// enrolled or last renewed with, which a receipt must be signed by.
	`ALTER TABLE devices ADD COLUMN pubkey BLOB;
	CREATE TABLE receipts (
		device_id TEXT NOT NULL,
		rkey TEXT NOT NULL,
		bundle_hash TEXT NOT NULL,
		digest TEXT NOT NULL,
		applied INTEGER NOT NULL,
		commit_id TEXT NOT NULL,
		release_version TEXT NOT NULL,
		result TEXT NOT NULL,
		reason TEXT NOT NULL,
		errors TEXT NOT NULL,
		received INTEGER NOT NULL,
		body BLOB NOT NULL,
		PRIMARY KEY (device_id, rkey)
	) WITHOUT ROWID;
	CREATE INDEX receipts_applied ON receipts (device_id, applied)`,
	// 3: each device's TPM counters (reset, restart, clock) of its last
	// accepted quote, for the AK they belong to (sha256 of its public area).
	// version makes the update conditional: hubs sharing the database never
	// move them backwards.
	`CREATE TABLE tpm_counters (
		device_id TEXT PRIMARY KEY,
		ak_hash BLOB NOT NULL,
		reset_count INTEGER NOT NULL,
		restart_count INTEGER NOT NULL,
		clock INTEGER NOT NULL,
		updated INTEGER NOT NULL,
		version INTEGER NOT NULL
	)`,
	// 4: the status page's device_view (see view.go): one row per device
	// derived from its latest report, a cache the hub can rebuild at any
	// time. It was created outside the migrations before, hence IF NOT
	// EXISTS. The indexes on devices let each hub notice, with one index
	// lookup, an enrolment or revocation made by another hub.
	`CREATE TABLE IF NOT EXISTS device_view (
		id TEXT PRIMARY KEY,
		seq INTEGER NOT NULL,
		received INTEGER NOT NULL,
		commit_attempted TEXT NOT NULL,
		commit_applied TEXT NOT NULL,
		commit_seen INTEGER NOT NULL,
		spec_hash TEXT NOT NULL,
		release TEXT NOT NULL,
		target TEXT NOT NULL,
		slot TEXT NOT NULL,
		update_state TEXT NOT NULL,
		update_since INTEGER NOT NULL,
		apps_total INTEGER NOT NULL,
		apps_healthy INTEGER NOT NULL,
		drifted INTEGER NOT NULL,
		clock_trusted INTEGER,
		skew INTEGER NOT NULL,
		skew_abs INTEGER NOT NULL,
		attest_ok INTEGER,
		weak INTEGER NOT NULL,
		problem_reason TEXT NOT NULL,
		problem_message TEXT NOT NULL,
		labels TEXT NOT NULL
	);
	CREATE INDEX IF NOT EXISTS device_view_commit ON device_view (commit_seen);
	CREATE INDEX IF NOT EXISTS devices_enrolled ON devices (enrolled);
	CREATE INDEX IF NOT EXISTS devices_revoked ON devices (revoked)`,
	// 5: site relays (shoal relay): their enrolment tokens name the hosts
	// their server certificate covers; each device remembers the relay its
	// latest report came through ('' straight to the hub).
	`ALTER TABLE tokens ADD COLUMN hosts TEXT NOT NULL DEFAULT '[]';
	CREATE TABLE relays (
		id TEXT PRIMARY KEY,
		hosts TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after INTEGER NOT NULL,
		enrolled INTEGER NOT NULL,
		revoked INTEGER NOT NULL,
		last_seen INTEGER NOT NULL,
		status BLOB
	);
	ALTER TABLE devices ADD COLUMN relay TEXT NOT NULL DEFAULT '';
	CREATE INDEX devices_relay ON devices (relay)`,
	// 6: staged rollouts (rollouts.go): each rollout of a commit, its
	// waves per track, its member devices with their grants, what happened
	// (events), and the lease that lets one hub at a time decide.
	`CREATE TABLE rollouts (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		commit_id TEXT NOT NULL,
		status TEXT NOT NULL,
		urgent INTEGER NOT NULL,
		reason TEXT NOT NULL,
		created INTEGER NOT NULL,
		updated INTEGER NOT NULL,
		policies BLOB NOT NULL,
		paused INTEGER NOT NULL,
		aborted INTEGER NOT NULL
	);
	CREATE INDEX rollouts_commit ON rollouts (commit_id);
	CREATE TABLE rollout_waves (
		rollout_id INTEGER NOT NULL,
		track TEXT NOT NULL,
		idx INTEGER NOT NULL,
		name TEXT NOT NULL,
		state TEXT NOT NULL,
		opened INTEGER NOT NULL,
		bake_start INTEGER NOT NULL,
		ended INTEGER NOT NULL,
		approved INTEGER NOT NULL,
		note TEXT NOT NULL,
		PRIMARY KEY (rollout_id, track, idx)
	);
	CREATE TABLE rollout_members (
		rollout_id INTEGER NOT NULL,
		device_id TEXT NOT NULL,
		track TEXT NOT NULL,
		wave INTEGER NOT NULL,
		labels TEXT NOT NULL,
		from_spec TEXT NOT NULL,
		to_spec TEXT NOT NULL,
		release TEXT NOT NULL,
		why TEXT NOT NULL,
		admitted INTEGER NOT NULL,
		granted INTEGER NOT NULL,
		grant_id TEXT NOT NULL,
		verdict TEXT NOT NULL,
		gates TEXT NOT NULL,
		flag TEXT NOT NULL,
		PRIMARY KEY (rollout_id, device_id)
	);
	CREATE INDEX rollout_members_device ON rollout_members (device_id);
	CREATE TABLE rollout_events (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		rollout_id INTEGER NOT NULL,
		time INTEGER NOT NULL,
		device_id TEXT NOT NULL,
		kind TEXT NOT NULL,
		message TEXT NOT NULL
	);
	CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
	CREATE TABLE leases (
		name TEXT PRIMARY KEY,
		holder TEXT NOT NULL,
		expires INTEGER NOT NULL
	)`,
	// 7: the device's clock state (ok, skewed, unknown, untrusted) beside
	// clock_trusted, so that "clock skewed" means skewed. The view is a
	// cache: deleting its rows rebuilds them from each latest report.
	`ALTER TABLE device_view ADD COLUMN clock_state TEXT NOT NULL DEFAULT '';
	DELETE FROM device_view`,
	// 8: whether a passed attestation held PCR values to expected ones
	// (1), or only proved the quote fresh and signed (0: the hub had no
	// PCR policy for the device). NULL for verdicts stored before: unknown,
	// shown as not checked.
	`ALTER TABLE devices ADD COLUMN attest_pcrs INTEGER`,
	// 9: the members that joined a rollout and wait for a wave (wave -1),
	// found with one index lookup on every controller step.
	`CREATE INDEX rollout_members_wave ON rollout_members (rollout_id, wave)`,
}

var postgresSchema = []string{
	// 1: initial schema. Times are Unix nanoseconds; 0 means unset.
	`CREATE TABLE tokens (
		hash BYTEA PRIMARY KEY,
		kind TEXT NOT NULL,
		device_id TEXT NOT NULL,
		created BIGINT NOT NULL,
		expires BIGINT NOT NULL,
		used BIGINT NOT NULL,
		revoked INTEGER NOT NULL
	);
	CREATE TABLE devices (
		id TEXT PRIMARY KEY,
		key_kind TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after BIGINT NOT NULL,
		enrolled BIGINT NOT NULL,
		revoked BIGINT NOT NULL,
		latest_seq BIGINT NOT NULL,
		state TEXT NOT NULL,
		groups TEXT NOT NULL,
		last_seen BIGINT NOT NULL,
		attest_ok INTEGER,
		attest_time BIGINT NOT NULL DEFAULT 0,
		ak BYTEA
	);
	CREATE TABLE reports (
		device_id TEXT NOT NULL,
		seq BIGINT NOT NULL,
		time BIGINT NOT NULL,
		received BIGINT NOT NULL,
		state TEXT NOT NULL,
		body BYTEA NOT NULL,
		PRIMARY KEY (device_id, seq)
	);
	CREATE INDEX reports_received ON reports (received);
	CREATE TABLE nonces (
		nonce BYTEA PRIMARY KEY,
		device_id TEXT NOT NULL,
		expires BIGINT NOT NULL,
		used INTEGER NOT NULL
	);
	CREATE TABLE attestations (
		id BIGSERIAL PRIMARY KEY,
		device_id TEXT NOT NULL,
		time BIGINT NOT NULL,
		ok INTEGER NOT NULL,
		result BYTEA NOT NULL
	);
	CREATE INDEX attestations_device ON attestations (device_id, id);
	CREATE TABLE pokes (
		id BIGSERIAL PRIMARY KEY,
		grp TEXT NOT NULL,
		devices TEXT NOT NULL,
		commit_id TEXT NOT NULL,
		reason TEXT NOT NULL,
		time BIGINT NOT NULL
	);
	CREATE TABLE ca (
		id INTEGER PRIMARY KEY,
		cert BYTEA NOT NULL,
		key BYTEA NOT NULL
	)`,
	// 2: device receipts for offline bundles, and the public key each device
	// enrolled or last renewed with, which a receipt must be signed by.
	`ALTER TABLE devices ADD COLUMN pubkey BYTEA;
	CREATE TABLE receipts (
		device_id TEXT NOT NULL,
		rkey TEXT NOT NULL,
		bundle_hash TEXT NOT NULL,
		digest TEXT NOT NULL,
		applied BIGINT NOT NULL,
		commit_id TEXT NOT NULL,
		release_version TEXT NOT NULL,
		result TEXT NOT NULL,
		reason TEXT NOT NULL,
		errors TEXT NOT NULL,
		received BIGINT NOT NULL,
		body BYTEA NOT NULL,
		PRIMARY KEY (device_id, rkey)
	);
	CREATE INDEX receipts_applied ON receipts (device_id, applied)`,
	// 3: each device's TPM counters (reset, restart, clock) of its last
	// accepted quote, for the AK they belong to (sha256 of its public area).
	// version makes the update conditional: hubs sharing the database never
	// move them backwards.
	`CREATE TABLE tpm_counters (
		device_id TEXT PRIMARY KEY,
		ak_hash BYTEA NOT NULL,
		reset_count BIGINT NOT NULL,
		restart_count BIGINT NOT NULL,
		clock BIGINT NOT NULL,
		updated BIGINT NOT NULL,
		version BIGINT NOT NULL
	)`,
	// 4: the status page's device_view (see view.go): one row per device
	// derived from its latest report, a cache the hub can rebuild at any
	// time. It was created outside the migrations before, hence IF NOT
	// EXISTS. The indexes on devices let each hub notice, with one index
	// lookup, an enrolment or revocation made by another hub.
	`CREATE TABLE IF NOT EXISTS device_view (
		id TEXT PRIMARY KEY,
		seq BIGINT NOT NULL,
		received BIGINT NOT NULL,
		commit_attempted TEXT NOT NULL,
		commit_applied TEXT NOT NULL,
		commit_seen BIGINT NOT NULL,
		spec_hash TEXT NOT NULL,
		release TEXT NOT NULL,
		target TEXT NOT NULL,
		slot TEXT NOT NULL,
		update_state TEXT NOT NULL,
		update_since BIGINT NOT NULL,
		apps_total INTEGER NOT NULL,
		apps_healthy INTEGER NOT NULL,
		drifted INTEGER NOT NULL,
		clock_trusted INTEGER,
		skew BIGINT NOT NULL,
		skew_abs BIGINT NOT NULL,
		attest_ok INTEGER,
		weak INTEGER NOT NULL,
		problem_reason TEXT NOT NULL,
		problem_message TEXT NOT NULL,
		labels TEXT NOT NULL
	);
	CREATE INDEX IF NOT EXISTS device_view_commit ON device_view (commit_seen);
	CREATE INDEX IF NOT EXISTS devices_enrolled ON devices (enrolled);
	CREATE INDEX IF NOT EXISTS devices_revoked ON devices (revoked)`,
	// 5: site relays (shoal relay): their enrolment tokens name the hosts
	// their server certificate covers; each device remembers the relay its
	// latest report came through ('' straight to the hub).
	`ALTER TABLE tokens ADD COLUMN hosts TEXT NOT NULL DEFAULT '[]';
	CREATE TABLE relays (
		id TEXT PRIMARY KEY,
		hosts TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		cert_not_after BIGINT NOT NULL,
		enrolled BIGINT NOT NULL,
		revoked BIGINT NOT NULL,
		last_seen BIGINT NOT NULL,
		status BYTEA
	);
	ALTER TABLE devices ADD COLUMN relay TEXT NOT NULL DEFAULT '';
	CREATE INDEX devices_relay ON devices (relay)`,
	// 6: staged rollouts (rollouts.go): each rollout of a commit, its
	// waves per track, its member devices with their grants, what happened
	// (events), and the lease that lets one hub at a time decide.
	`CREATE TABLE rollouts (
		id BIGSERIAL PRIMARY KEY,
		commit_id TEXT NOT NULL,
		status TEXT NOT NULL,
		urgent INTEGER NOT NULL,
		reason TEXT NOT NULL,
		created BIGINT NOT NULL,
		updated BIGINT NOT NULL,
		policies BYTEA NOT NULL,
		paused INTEGER NOT NULL,
		aborted INTEGER NOT NULL
	);
	CREATE INDEX rollouts_commit ON rollouts (commit_id);
	CREATE TABLE rollout_waves (
		rollout_id BIGINT NOT NULL,
		track TEXT NOT NULL,
		idx INTEGER NOT NULL,
		name TEXT NOT NULL,
		state TEXT NOT NULL,
		opened BIGINT NOT NULL,
		bake_start BIGINT NOT NULL,
		ended BIGINT NOT NULL,
		approved INTEGER NOT NULL,
		note TEXT NOT NULL,
		PRIMARY KEY (rollout_id, track, idx)
	);
	CREATE TABLE rollout_members (
		rollout_id BIGINT NOT NULL,
		device_id TEXT NOT NULL,
		track TEXT NOT NULL,
		wave INTEGER NOT NULL,
		labels TEXT NOT NULL,
		from_spec TEXT NOT NULL,
		to_spec TEXT NOT NULL,
		release TEXT NOT NULL,
		why TEXT NOT NULL,
		admitted BIGINT NOT NULL,
		granted BIGINT NOT NULL,
		grant_id TEXT NOT NULL,
		verdict TEXT NOT NULL,
		gates TEXT NOT NULL,
		flag TEXT NOT NULL,
		PRIMARY KEY (rollout_id, device_id)
	);
	CREATE INDEX rollout_members_device ON rollout_members (device_id);
	CREATE TABLE rollout_events (
		id BIGSERIAL PRIMARY KEY,
		rollout_id BIGINT NOT NULL,
		time BIGINT NOT NULL,
		device_id TEXT NOT NULL,
		kind TEXT NOT NULL,
		message TEXT NOT NULL
	);
	CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);
	CREATE TABLE leases (
		name TEXT PRIMARY KEY,
		holder TEXT NOT NULL,
		expires BIGINT NOT NULL
	)`,
	// 7: the device's clock state (ok, skewed, unknown, untrusted) beside
	// clock_trusted, so that "clock skewed" means skewed. The view is a
	// cache: deleting its rows rebuilds them from each latest report.
	`ALTER TABLE device_view ADD COLUMN clock_state TEXT NOT NULL DEFAULT '';
	DELETE FROM device_view`,
	// 8: whether a passed attestation held PCR values to expected ones
	// (1), or only proved the quote fresh and signed (0: the hub had no
	// PCR policy for the device). NULL for verdicts stored before: unknown,
	// shown as not checked.
	`ALTER TABLE devices ADD COLUMN attest_pcrs INTEGER`,
	// 9: the members that joined a rollout and wait for a wave (wave -1),
	// found with one index lookup on every controller step.
	`CREATE INDEX rollout_members_wave ON rollout_members (rollout_id, wave)`,
}
