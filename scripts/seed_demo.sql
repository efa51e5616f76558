-- Sample data for the demo: two West African banks, their XOF treasury accounts, and a few payout slices.
-- __SLICES__ is replaced by the number of slices to seed. Idempotent: re-running changes nothing.
INSERT INTO bank_profiles (id, name, bic, country) VALUES
    ('ecobank-sn', 'Ecobank Sénégal', 'ECOCSNDA', 'SN'),
    ('sgbci-ci', 'Société Générale Côte d''Ivoire', 'SGCICIAB', 'CI')
ON CONFLICT (id) DO NOTHING;

INSERT INTO treasury_accounts (bank_profile_id, label, account_number, currency) VALUES
    ('ecobank-sn', 'payouts-xof', 'SN0120100100123456789012', 'XOF'),
    ('sgbci-ci', 'payouts-xof', 'CI0080100100987654321098', 'XOF')
ON CONFLICT (bank_profile_id, label) DO NOTHING;

INSERT INTO payout_slices (payout_id, slice_no, treasury_account_id, amount, currency, rail, priority,
                           beneficiary_name, beneficiary_account, remittance_info)
SELECT 'demo-' || lpad(n::text, 5, '0'), 1,
       (SELECT id FROM treasury_accounts WHERE bank_profile_id = CASE WHEN n % 3 = 0 THEN 'sgbci-ci' ELSE 'ecobank-sn' END
                                          AND label = 'payouts-xof'),
       (5000 + (n * 37) % 95000)::numeric, 'XOF', 'ach', (n % 2)::smallint,
       'Beneficiary ' || n, 'SN08' || lpad((100000000 + n)::text, 20, '0'), 'Molam payout demo ' || n
FROM generate_series(1, __SLICES__) AS n
ON CONFLICT (payout_id, slice_no) DO NOTHING;
