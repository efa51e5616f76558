-- Sample data for the demo: three West African banks, their XOF treasury accounts, and a few payout slices.
-- __SLICES__ is replaced by the number of slices to seed. Idempotent: re-running changes nothing.
INSERT INTO bank_profiles (id, name, bic, country) VALUES
    ('ecobank-sn', 'Ecobank Sénégal', 'ECOCSNDA', 'SN'),
    ('sgbci-ci', 'Société Générale Côte d''Ivoire', 'SGCICIAB', 'CI'),
    ('cbao-sn', 'CBAO Groupe Attijariwafa bank', 'CBAOSNDA', 'SN')
ON CONFLICT (id) DO NOTHING;

INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency) VALUES
    ('ecobank-sn', 'payouts-xof', 'SN0120100100123456789012', 'XOF'),
    ('sgbci-ci', 'payouts-xof', 'CI0080100100987654321098', 'XOF'),
    ('cbao-sn', 'payouts-xof', '0411-0042-000123456', 'XOF')  -- a local account number, not IBAN-registered
ON CONFLICT (bank_profile_id, label) DO NOTHING;

INSERT INTO payout_slices (payout_id, slice_no, treasury_account_id, amount, currency, rail, priority,
                           beneficiary_name, beneficiary_account, remittance_info)
SELECT 'demo-' || lpad(n::text, 5, '0'), 1,
       (SELECT id FROM treasury_accounts WHERE label = 'payouts-xof' AND bank_profile_id =
            CASE WHEN n % 5 = 0 THEN 'cbao-sn' WHEN n % 3 = 0 THEN 'sgbci-ci' ELSE 'ecobank-sn' END),
       (5000 + (n * 37) % 95000)::numeric, 'XOF', 'ach', (n % 2)::smallint,
       CASE WHEN n % 35 = 0 THEN 'Aïssatou Ndiàye ' || n ELSE 'Beneficiary ' || n END,
       -- cbao-sn pays by file: local account numbers (Othr/Id), one in seven a registered IBAN
       CASE WHEN n % 5 <> 0 THEN 'SN08' || lpad((100000000 + n)::text, 20, '0')
            WHEN n % 7 = 0 THEN 'SN08SN0100152000048500003035' ELSE '0412' || lpad(n::text, 10, '0') END,
       'Molam payout demo ' || n
FROM generate_series(1, __SLICES__) AS n
ON CONFLICT (payout_id, slice_no) DO NOTHING;
