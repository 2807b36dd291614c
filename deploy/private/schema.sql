-- aquatic private mode: the tracker's tables (MariaDB >= 10.6).
--
-- The tracker READS tracker_users, tracker_torrents and
-- tracker_client_whitelist (at start, on SIGUSR1 and every
-- private.reload_interval_secs); a site may replace them by views over its
-- own tables (see deploy/README.md). It WRITES only tracker_transfer,
-- tracker_snatches, tracker_torrent_stats and tracker_batches, with
-- multi-row upserts, which cannot go through join views: keep those four as
-- tables and read them through views if the site likes.
--
-- Addresses: tracker_transfer.last_ip is VARBINARY(16) holding 4 bytes for
-- an IPv4 peer and 16 for an IPv6 peer, network byte order: exactly what
-- INET6_ATON() makes; read it with INET6_NTOA(last_ip).

CREATE TABLE IF NOT EXISTS tracker_users (
    id INT UNSIGNED NOT NULL PRIMARY KEY,
    -- 32 ASCII letters and digits, as in /<passkey>/announce.
    passkey CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- 0: the member may only seed (an announce with left > 0 is refused).
    can_leech BOOLEAN NOT NULL DEFAULT TRUE,
    -- 0: every announce is refused ("your account is disabled").
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    UNIQUE KEY passkey (passkey)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS tracker_torrents (
    id INT UNSIGNED NOT NULL PRIMARY KEY,
    info_hash BINARY(20) NOT NULL,
    -- none: both directions count; free: download is not counted;
    -- neutral: neither upload nor download is counted.
    freeleech ENUM('none', 'free', 'neutral') NOT NULL DEFAULT 'none',
    UNIQUE KEY info_hash (info_hash)
) ENGINE = InnoDB;

-- Peer-id prefixes of allowed clients (e.g. '-lt20', '-TR4', 'A2-').
-- An empty table allows every client.
CREATE TABLE IF NOT EXISTS tracker_client_whitelist (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    peer_id_prefix VARBINARY(20) NOT NULL,
    note VARCHAR(255) NOT NULL DEFAULT '',
    UNIQUE KEY peer_id_prefix (peer_id_prefix)
) ENGINE = InnoDB;

-- Written by the tracker. Seeders and leechers are current for every
-- torrent that ever had a peer (0 once the last one left or expired).
CREATE TABLE IF NOT EXISTS tracker_torrent_stats (
    torrent_id INT UNSIGNED NOT NULL PRIMARY KEY,
    seeders INT UNSIGNED NOT NULL DEFAULT 0,
    leechers INT UNSIGNED NOT NULL DEFAULT 0,
    snatched INT UNSIGNED NOT NULL DEFAULT 0,
    last_action DATETIME NULL
) ENGINE = InnoDB;

-- Written by the tracker: credited bytes per member and torrent (after
-- freeleech / neutral rules), and where the member last announced from.
CREATE TABLE IF NOT EXISTS tracker_transfer (
    user_id INT UNSIGNED NOT NULL,
    torrent_id INT UNSIGNED NOT NULL,
    uploaded BIGINT UNSIGNED NOT NULL DEFAULT 0,
    downloaded BIGINT UNSIGNED NOT NULL DEFAULT 0,
    last_ip VARBINARY(16) NULL,
    last_port SMALLINT UNSIGNED NULL,
    last_announce DATETIME NULL,
    PRIMARY KEY (user_id, torrent_id),
    KEY torrent_id (torrent_id)
) ENGINE = InnoDB;

-- Written by the tracker: a `completed` announce with left = 0.
CREATE TABLE IF NOT EXISTS tracker_snatches (
    user_id INT UNSIGNED NOT NULL,
    torrent_id INT UNSIGNED NOT NULL,
    times INT UNSIGNED NOT NULL DEFAULT 0,
    first_at DATETIME NOT NULL,
    last_at DATETIME NOT NULL,
    PRIMARY KEY (user_id, torrent_id),
    KEY torrent_id (torrent_id)
) ENGINE = InnoDB;

-- Written by the tracker in the same transaction as each batch: the last
-- batch applied. A batch whose COMMIT succeeded but whose acknowledgement
-- was lost is recognised on retry and not applied twice.
CREATE TABLE IF NOT EXISTS tracker_batches (
    tracker_id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    last_sequence BIGINT UNSIGNED NOT NULL
) ENGINE = InnoDB;
