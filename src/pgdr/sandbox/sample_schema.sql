-- The sandbox's sample application: foreign keys, unique constraints, indexes,
-- a TOASTed column, about 100k rows. Deterministic, so tests can count on it.
create table customers (
    id bigint generated always as identity primary key,
    email text not null unique,
    name text not null,
    created_at timestamptz not null default now()
);
create table products (
    id int generated always as identity primary key,
    sku text not null unique,
    name text not null,
    price_cents int not null check (price_cents >= 0)
);
create table orders (
    id bigint generated always as identity primary key,
    customer_id bigint not null references customers (id),
    status text not null default 'new',
    created_at timestamptz not null default now()
);
create index orders_customer_id_idx on orders (customer_id);
create table order_items (
    order_id bigint not null references orders (id) on delete cascade,
    product_id int not null references products (id),
    quantity int not null check (quantity > 0),
    primary key (order_id, product_id)
);
create index order_items_product_id_idx on order_items (product_id);
create table documents (
    id bigint generated always as identity primary key,
    customer_id bigint not null references customers (id),
    body text not null
);

insert into customers (email, name, created_at)
select 'user' || g || '@example.com', 'Customer ' || g, now() - (g || ' minutes')::interval
from generate_series(1, 20000) g;

insert into products (sku, name, price_cents)
select 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g, (g * 37) % 10000
from generate_series(1, 1000) g;

insert into orders (customer_id, status, created_at)
select (g % 20000) + 1, (array['new', 'paid', 'shipped'])[(g % 3) + 1], now() - (g || ' seconds')::interval
from generate_series(1, 30000) g;

insert into order_items (order_id, product_id, quantity)
select o, ((o * 7 + j) % 1000) + 1, (o + j) % 5 + 1
from generate_series(1, 30000) o, generate_series(1, 2) j;

-- TOASTed bodies (~4 kB each, compressible but above the TOAST threshold).
insert into documents (customer_id, body)
select (g % 20000) + 1, repeat(md5(g::text), 128)
from generate_series(1, 200) g;

analyze;
