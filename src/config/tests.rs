use super::*;

fn show(text: &str) {
    match Config::parse(text) {
        Ok(l) => println!("OK warnings={:#?}", l.warnings),
        Err(e) => println!("ERR {:#?}", e),
    }
}

#[test]
fn probe() {
    let base = "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\n";
    show(&format!("{base}[limits]\nmax_body = 50\n"));
    show(&format!("{base}[[tls.certificates]]\ncert = \"a\"\n"));
    show(&format!(
        "{base}[listen]\nfederation = []\n[well_known]\nserver = \"matrix.example.com\"\n"
    ));
    show(&format!("{base}names = [\"matrix.example.com\"]\n"));
    show(&format!("{base}[listen]\nhttps = []\nfederation = []\n"));
    show("server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n");
    show(
        "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\ncert = \"a\"\nkey = \"b\"\n",
    );
    show(
        "server_name = \"example.com\"\n[backend]\nurl = \"http://127.0.0.1:8008\"\n[tls]\nself_signed = true\n[[tls.certificates]]\ncert = \"a\"\nkey = \"b\"\n",
    );
    show("server_name = \"example.com\"\nzzz = 1\n[backend]\nurl = \"http://127.0.0.1:8008\"\n");
    show(
        "server_name = \"exa_mple.com\"\n[backend]\nurl = \"https://127.0.0.1:8008\"\n[tls]\nself_signed = true\n[limits]\nidle_timeout = \"forever\"\n",
    );
    show(&format!(
        "{base}[forward]\nextra_prefixes = [\"/_x/../\", \"/_matrix/\"]\n"
    ));
    show(&format!(
        "{base}[listen]\nhttps = [\"[::]:443\"]\nfederation = [\"0.0.0.0:443\"]\n"
    ));
}
