"""The web consoles (mediators, operators): one shell shared by every page.

- jisr.console.catalog: the interface texts (content/console/<lang>.yml) in six languages
  (fr, en, es, it, de, ar; Arabic right to left) and which one a request gets; French by default.
- jisr.console.login: the sign-in page (no script), in the same languages.
- jisr.console.shell: ``console_page()`` renders a page in the common layout (nav bar with the
  account and a logout button, message area, CSP headers); static files under /console/static.
- jisr.console.routes: GET /console (sends each role to its console) and the mediators' pages.

A console page is a skeleton rendered on the server plus one script of its own that builds the
DOM with ``textContent`` only (see static/shell.js, ``Jisr.el``): family messages are data, never
markup.
"""
