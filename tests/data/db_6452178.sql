-- written by execd at commit 6452178 (schema 5): tests/data/make_db_6452178.py
PRAGMA user_version = 5;
BEGIN TRANSACTION;
CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        price TEXT NOT NULL,
        at REAL NOT NULL
    );
INSERT INTO "fills" VALUES(1,'alpha-filled','AAPL','buy','10','189.5',1780000003.0);
CREATE TABLE order_events (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        filled_qty TEXT NOT NULL,
        detail TEXT,
        at REAL NOT NULL
    );
INSERT INTO "order_events" VALUES(1,'alpha-filled','ACCEPTED','SUBMITTED','0',NULL,1780000000.0);
INSERT INTO "order_events" VALUES(2,'alpha-resting','ACCEPTED','SUBMITTED','0',NULL,1780000001.0);
INSERT INTO "order_events" VALUES(3,'alpha-pending','ACCEPTED','PENDING','0',NULL,1780000002.0);
INSERT INTO "order_events" VALUES(4,'alpha-filled','FILLED','FILLED','10','{"qty": "10", "price": "189.5"}',1780000003.0);
CREATE TABLE orders (
        client_order_id TEXT PRIMARY KEY,
        strategy_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        type TEXT NOT NULL,
        limit_price TEXT,
        time_in_force TEXT NOT NULL,
        state TEXT NOT NULL,
        broker_order_id TEXT,
        filled_qty TEXT NOT NULL,
        filled_avg_price TEXT,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    , owner_uid INTEGER, notional TEXT, stop_price TEXT, trail_price TEXT, trail_percent TEXT, extended_hours INTEGER NOT NULL DEFAULT 0, order_class TEXT NOT NULL DEFAULT 'simple', take_profit_limit_price TEXT, stop_loss_stop_price TEXT, stop_loss_limit_price TEXT, parent_client_order_id TEXT, legs TEXT, replaces TEXT, replaced_by TEXT);
INSERT INTO "orders" VALUES('alpha-filled','alpha','AAPL','buy','10','market',NULL,'day','FILLED','b-1','10','189.5',NULL,1780000000.0,1780000003.0,1000,NULL,NULL,NULL,NULL,0,'simple',NULL,NULL,NULL,NULL,NULL,NULL,NULL);
INSERT INTO "orders" VALUES('alpha-resting','alpha','AAPL','sell','4','limit','250','day','SUBMITTED','b-2','0',NULL,NULL,1780000001.0,1780000001.0,1000,NULL,NULL,NULL,NULL,0,'simple',NULL,NULL,NULL,NULL,NULL,NULL,NULL);
INSERT INTO "orders" VALUES('alpha-pending','alpha','AAPL','buy','1','market',NULL,'day','PENDING',NULL,'0',NULL,NULL,1780000002.0,1780000002.0,1000,NULL,NULL,NULL,NULL,0,'simple',NULL,NULL,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE positions (
        symbol TEXT PRIMARY KEY,
        qty TEXT NOT NULL,
        cost_basis TEXT NOT NULL,
        last_price TEXT
    );
INSERT INTO "positions" VALUES('AAPL','10','1895','189.5');
CREATE TABLE sessions (
        strategy_id TEXT PRIMARY KEY, heartbeat_s REAL NOT NULL, opened_at REAL NOT NULL
    );
CREATE TABLE storage_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
CREATE TABLE strategy_halts (
        strategy_id TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL
    );
INSERT INTO "strategy_halts" VALUES('beta','risk review',1780000005.0);
CREATE TABLE trading_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    );
INSERT INTO "trading_state" VALUES(1,'HALTED','operator',1780000004.0);
CREATE INDEX orders_open ON orders(state)
        WHERE state IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED');
CREATE INDEX orders_strategy ON orders(strategy_id, created_at);
CREATE INDEX orders_created ON orders(created_at);
CREATE INDEX order_events_order ON order_events(client_order_id);
CREATE INDEX orders_owner ON orders(owner_uid, created_at);
CREATE INDEX orders_parent ON orders(parent_client_order_id)
        WHERE parent_client_order_id IS NOT NULL;
CREATE INDEX orders_broker_id ON orders(broker_order_id);
COMMIT;
