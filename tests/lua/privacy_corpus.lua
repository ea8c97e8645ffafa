-- Strings for tally.privacy's detectors: `positives` hold personal data of the named detector
-- (inside text or whole), `negatives` hold none, only look-alikes an analytics payload carries
-- (versions, order numbers, timestamps, ids, prices, coordinates). Card and IBAN numbers are the
-- networks' and banks' published test numbers; phone numbers are in ranges reserved for fiction
-- (Ofcom's 020 7946 0xxx, NANP 555-01xx) or made up; addresses use the documentation ranges.
-- Some positives are written the way the detectors are documented NOT to catch (marked `miss`):
-- they keep the measured recall honest, and a detector that starts catching them shows up here.
return {
  positives = {
    -- e-mail (substrings)
    { "email", "peter@initech.com" },
    { "email", "mail me at a@b.co please" },
    { "email", "Contact: Jane.Doe+news@Example.ORG." },
    { "email", "first.last@sub.domain.co.uk" },
    { "email", "x_y-z%tag@mail-server.example.net" },
    { "email", "<bob@example.com>" },
    { "email", "mailto:alice@example.io?subject=hi" },
    { "email", "user=carol@example.de&ref=2" },
    { "email", "jürgen@müller.de" },
    { "email", "reply to 42@numbers.example.com" },
    { "email", "name (at) example.com", miss = true },
    { "email", "john%40example.com", miss = true },
    -- phone
    { "phone", "+44 20 7946 0958" },
    { "phone", "call me on +1 (415) 555-2671 today" },
    { "phone", "+33 6 12 34 56 78" },
    { "phone", "+49 30 1234567" },
    { "phone", "+4915112345678" },
    { "phone", "tel:+81-3-1234-5678" },
    { "phone", "0044 20 7946 0958" },
    { "phone", "(415) 555-2671" },
    { "phone", "415-555-2671" },
    { "phone", "415.555.2671" },
    { "phone", "1-800-555-0199" },
    { "phone", "020 7946 0958" },
    { "phone", "06 12 34 56 78" },
    { "phone", "06.12.34.56.78" },
    { "phone", "(030) 1234567" },
    { "phone", "0612345678" },
    { "phone", "my mobile is 07700 900123" },
    { "phone", "call 0612345678 tomorrow", miss = true },
    { "phone", "4155552671", miss = true },
    -- ip
    { "ip", "203.0.113.7" },
    { "ip", "client 198.51.100.23 connected" },
    { "ip", "10.0.0.1" },
    { "ip", "http://192.0.2.10:8080/admin" },
    { "ip", "from 100.64.12.9." },
    { "ip", "2001:db8:85a3:8d3:1319:8a2e:370:7348" },
    { "ip", "2001:db8::1" },
    { "ip", "fe80::1ff:fe23:4567:890a" },
    { "ip", "::ffff:192.0.2.128" },
    { "ip", "peer [2001:db8::42]:443" },
    { "ip", "::1" },
    -- card (Luhn-valid test numbers)
    { "card", "4111111111111111" },
    { "card", "4111 1111 1111 1111" },
    { "card", "4111-1111-1111-1111" },
    { "card", "paid with 5555 5555 5555 4444 yesterday" },
    { "card", "5105105105105100" },
    { "card", "3782 822463 10005" },
    { "card", "371449635398431" },
    { "card", "6011111111111117" },
    { "card", "3530111333300000" },
    { "card", "card: 4012888888881881." },
    { "card", "2223003122003222" },
    { "card", "30569309025904" },
    { "card", "4111 11111111 1111", miss = true },
    -- iban (checksum-valid examples)
    { "iban", "GB82 WEST 1234 5698 7654 32" },
    { "iban", "GB82WEST12345698765432" },
    { "iban", "DE89 3704 0044 0532 0130 00" },
    { "iban", "pay to FR14 2004 1010 0505 0001 3M02 606 now" },
    { "iban", "NL91ABNA0417164300" },
    { "iban", "iban: BE68539007547034" },
    { "iban", "CH9300762011623852957" },
    { "iban", "ES9121000418450200051332" },
    { "iban", "it60x0542811101000000123456" },
    { "iban", "GB82-WEST-1234-5698-7654-32", miss = true },
  },
  negatives = {
    -- versions and builds
    "1.2.3.4", "version 1.2.3.4", "v1.2.3.4", "Chrome/120.0.0.0", "build 10.0.19045.3693", "2.10.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36",
    "1.2.3.4.5", "release 4.3.2.1",
    -- order numbers, ids, references
    "order 1234567890123456", "ORD-2024-000123", "invoice 4000123412341235", "#1234 5678 9012 3456",
    "1234567890", "SKU 100200300400", "ticket 78123", "00012345678", "customer 1029384756",
    "user-42", "anon-5f0c2e7a", "ref 9876543210987654321",
    -- timestamps and dates
    "2024-05-01T12:00:00.000Z", "2024-05-01 12:30:45", "12:30:45", "1733590000000", "1733590000",
    "01.02.2024 12:30", "31/12/2023", "20240501", "Mon, 06 May 2024 10:00:00 GMT",
    -- uuids, hashes, hex
    "123e4567-e89b-12d3-a456-426614174000", "550e8400-e29b-41d4-a716-446655440000",
    "d41d8cd98f00b204e9800998ecf8427e", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "deadbeef", "0x7fffffff",
    -- prices, quantities, measures
    "$1,299.99", "19.99", "EUR 1 299,00", "12 x 4.50", "-122.4194", "37.7749, -122.4194", "100%", "3.14159265358979",
    "+15.5%", "score 1500 - 1200",
    -- colons and dots that are not addresses
    "std::vector<int>", "00:1a:2b:3c:4d:5e", "a:b:c", "10:30", "ratio 16:9", "file.tar.gz", "example.com",
    "@username", "user@", "@@", "a@b", "x@localhost", "see section 2.3.4",
    -- letters-and-digits that are not IBANs
    "GB82 WEST 1234 5698 7654 33", "DE00 0000 0000 0000 0000 00", "AB12 3456 7890", "ISO 8601",
    "Ab12 note", "US12345678901234",
    -- plain text
    "Button Clicked", "Contact Us", "Hello, world!", "", "Added 3 items to cart",
    "Level 12 completed in 345 seconds",
  },
}
